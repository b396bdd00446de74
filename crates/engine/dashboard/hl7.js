// An HL7 v2 message as a tree of named nodes with Terser-style paths
// (PID-3(2)-4-2, OBX(3)-5), for the message view when the API gives the raw
// text but no parsed tree. Display only: values stay escaped as sent
// (\F\, \S\ ...), exactly as the message carries them.

/** Splits ER7 text into segments; returns [] for anything that is not HL7 v2. */
export function parseHl7(text) {
  const lines = String(text || '').split(/\r\n|\r|\n/).filter((l) => l.length);
  if (!lines.length || !/^(MSH|FHS|BHS)/.test(lines[0]) || lines[0].length < 8) return [];
  const fieldSep = lines[0][3];
  const enc = lines[0].split(fieldSep)[1] || '';
  const [comp, rep, , sub] = [enc[0] || '^', enc[1] || '~', enc[2] || '\\', enc[3] || '&'];
  const occurrences = new Map();
  return lines.map((line) => {
    const name = line.slice(0, 3);
    const n = (occurrences.get(name) || 0) + 1;
    occurrences.set(name, n);
    const segPath = n > 1 ? `${name}(${n})` : name;
    const isHeader = /^(MSH|FHS|BHS)$/.test(name);
    const parts = line.split(fieldSep);
    // MSH-1 is the field separator itself, so the header's fields are numbered one further.
    const values = isHeader ? [fieldSep, ...parts.slice(1)] : parts.slice(1);
    const fields = [];
    values.forEach((value, i) => {
      if (value === '') return;
      const fieldPath = `${segPath}-${i + 1}`;
      const literal = isHeader && i < 2;
      const reps = literal ? [value] : value.split(rep);
      reps.forEach((repValue, r) => {
        if (repValue === '' && reps.length > 1) return;
        const path = reps.length > 1 ? `${fieldPath}(${r + 1})` : fieldPath;
        const comps = literal ? [repValue] : repValue.split(comp);
        fields.push({
          path, value: repValue,
          children: comps.length > 1
            ? comps.map((c, ci) => ({
              path: `${path}-${ci + 1}`, value: c,
              children: c.includes(sub) ? c.split(sub).map((s, si) => ({ path: `${path}-${ci + 1}-${si + 1}`, value: s, children: [] })) : [],
            })).filter((c) => c.value !== '')
            : [],
        });
      });
    });
    return { path: segPath, value: line, children: fields };
  });
}
