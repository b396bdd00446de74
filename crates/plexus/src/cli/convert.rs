//! `plexus convert`: the converters of `plexus-convert` from the command line.
//!
//! - `hl7-to-fhir FILE`: an HL7 v2 message to a FHIR R4 transaction Bundle
//!   (pretty JSON on standard output).
//! - `fhir-to-hl7 FILE --message ORU_R01|MDM_T02|ADT_A04|ADT_A08|SIU_S12|RAS_O17`:
//!   a FHIR Bundle or resource to an HL7 v2 message, segments on separate
//!   lines for a terminal (`--raw` for the exact bytes with CR separators).
//! - `map --rules FILE INPUT.json [--reverse]`: JSON through a mapping-rule
//!   file (TOML, or YAML for `.yaml`/`.yml`); every rule violation is printed
//!   and the exit code is 1.
//!
//! `-` reads standard input. Options files are TOML with the keys of
//! `Hl7ToFhirOptions` / `FhirToHl7Options`, the same the engine config takes.
//! Output is for the user at the terminal, so it shows message content.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use convert::rules::{MappingRules, RulesError};
use convert::{FhirToHl7Options, Hl7ToFhirOptions, TargetMessage};

/// `plexus convert` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ConvertCommand {
    /// Convert an HL7 v2 message to a FHIR R4 transaction Bundle.
    Hl7ToFhir(Hl7ToFhirArgs),
    /// Convert a FHIR R4 Bundle (or resource) to an HL7 v2 message.
    FhirToHl7(FhirToHl7Args),
    /// Map JSON with a mapping-rule file (TOML or YAML).
    Map(MapArgs),
}

/// `plexus convert hl7-to-fhir`.
#[derive(Debug, clap::Args)]
pub struct Hl7ToFhirArgs {
    /// The HL7 v2 file (`-` for standard input).
    pub file: PathBuf,
    /// Conversion options (TOML: identifier_systems, code_systems,
    /// code_tables, default_offset ...).
    #[arg(long)]
    pub options: Option<PathBuf>,
}

/// `plexus convert fhir-to-hl7`.
#[derive(Debug, clap::Args)]
pub struct FhirToHl7Args {
    /// The FHIR JSON file (`-` for standard input).
    pub file: PathBuf,
    /// The message to produce: ORU_R01, MDM_T02, ADT_A04, ADT_A08, SIU_S12 or RAS_O17.
    #[arg(long)]
    pub message: String,
    /// HL7 version (MSH-12); overrides the options file. Default 2.5.1.
    #[arg(long)]
    pub hl7_version: Option<String>,
    /// Conversion options (TOML: sending_application, version ...).
    #[arg(long)]
    pub options: Option<PathBuf>,
    /// Print the exact bytes (CR between segments) instead of lines.
    #[arg(long)]
    pub raw: bool,
}

/// `plexus convert map`.
#[derive(Debug, clap::Args)]
pub struct MapArgs {
    /// The rule file (`.toml`, `.yaml` or `.yml`).
    #[arg(long)]
    pub rules: PathBuf,
    /// The input JSON (`-` for standard input).
    pub input: PathBuf,
    /// Apply the rules backwards (target paths to source paths).
    #[arg(long)]
    pub reverse: bool,
}

/// Runs a `plexus convert` subcommand.
pub fn run(cmd: ConvertCommand) -> anyhow::Result<ExitCode> {
    let mut out = io::stdout().lock();
    match cmd {
        ConvertCommand::Hl7ToFhir(args) => {
            out.write_all(hl7_to_fhir(&args)?.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        ConvertCommand::FhirToHl7(args) => {
            out.write_all(&fhir_to_hl7(&args)?)?;
            Ok(ExitCode::SUCCESS)
        }
        ConvertCommand::Map(args) => match map(&args)? {
            Ok(json) => {
                out.write_all(json.as_bytes())?;
                Ok(ExitCode::SUCCESS)
            }
            Err(violations) => {
                let mut err = io::stderr().lock();
                for v in violations {
                    writeln!(err, "{v}")?;
                }
                Ok(ExitCode::FAILURE)
            }
        },
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        io::stdin().read_to_string(&mut s).context("reading standard input")?;
        return Ok(s);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn hl7_to_fhir(args: &Hl7ToFhirArgs) -> anyhow::Result<String> {
    let opts = match &args.options {
        Some(p) => Hl7ToFhirOptions::from_toml(&read(p)?).with_context(|| format!("options {}", p.display()))?,
        None => Hl7ToFhirOptions::default(),
    };
    let text = read(&args.file)?;
    let converting = || format!("converting {}", args.file.display());
    let message = hl7v2::Message::parse(text.as_bytes())
        .map_err(|e| convert::ConvertError::NotHl7(e.to_string()))
        .with_context(converting)?;
    // The Bundle is written straight from the converter (the same bytes as
    // serde_json's pretty printer over `hl7_to_fhir`'s value).
    let mut json = convert::hl7_to_fhir_json_pretty(&message, &opts).with_context(converting)?;
    json.push(b'\n');
    Ok(String::from_utf8(json)?)
}

fn fhir_to_hl7(args: &FhirToHl7Args) -> anyhow::Result<Vec<u8>> {
    let target: TargetMessage = args.message.parse()?;
    let mut opts = match &args.options {
        Some(p) => FhirToHl7Options::from_toml(&read(p)?).with_context(|| format!("options {}", p.display()))?,
        None => FhirToHl7Options::default(),
    };
    if let Some(v) = &args.hl7_version {
        opts.version = v.clone();
    }
    let input: serde_json::Value =
        serde_json::from_str(&read(&args.file)?).with_context(|| format!("{} is not JSON", args.file.display()))?;
    let msg =
        convert::fhir_to_hl7(&input, target, &opts).with_context(|| format!("converting {}", args.file.display()))?;
    let mut bytes = msg.as_bytes().to_vec();
    if !args.raw {
        for b in bytes.iter_mut().filter(|b| **b == b'\r') {
            *b = b'\n';
        }
    }
    Ok(bytes)
}

/// The mapped JSON, or the rule violations.
fn map(args: &MapArgs) -> anyhow::Result<Result<String, Vec<String>>> {
    let text = read(&args.rules)?;
    let yaml = args.rules.extension().is_some_and(|e| e == "yaml" || e == "yml");
    let rules = if yaml { MappingRules::from_yaml(&text) } else { MappingRules::from_toml(&text) }
        .with_context(|| format!("rules {}", args.rules.display()))?;
    let input: serde_json::Value =
        serde_json::from_str(&read(&args.input)?).with_context(|| format!("{} is not JSON", args.input.display()))?;
    let result = if args.reverse { rules.apply_reverse(&input) } else { rules.apply(&input) };
    match result {
        Ok(v) => Ok(Ok(serde_json::to_string_pretty(&v)? + "\n")),
        Err(RulesError::Violations(v)) => Ok(Err(v.iter().map(ToString::to_string).collect())),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const ADT: &str = "MSH|^~\\&|A|B|||20240101120000+0100||ADT^A04^ADT_A01|1|P|2.5.1\rEVN|A04|20240101120000+0100\r\
                       PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\rPV1|1|O\r";

    #[test]
    fn hl7_to_fhir_prints_a_bundle_and_applies_the_options_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "a.hl7", ADT);
        let options = write(dir.path(), "o.toml", "[identifier_systems]\nHOSP = \"https://hosp.example/mrn\"\n");
        let json = hl7_to_fhir(&Hl7ToFhirArgs { file, options: Some(options.clone()) }).unwrap();
        let bundle: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(bundle["entry"][0]["resource"]["identifier"][0]["system"], "https://hosp.example/mrn");
        // Printed as serde_json's pretty printer prints the library's Value.
        let opts = Hl7ToFhirOptions::from_toml(&std::fs::read_to_string(&options).unwrap()).unwrap();
        let value = convert::hl7_to_fhir_text(ADT, &opts).unwrap();
        assert_eq!(json, serde_json::to_string_pretty(&value).unwrap() + "\n");
    }

    #[test]
    fn fhir_to_hl7_prints_lines_or_raw_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = convert::hl7_to_fhir_text(ADT, &Default::default()).unwrap();
        let file = write(dir.path(), "b.json", &bundle.to_string());
        let args = |raw| FhirToHl7Args {
            file: file.clone(),
            message: "ADT_A08".into(),
            hl7_version: Some("2.6".into()),
            options: None,
            raw,
        };
        let lines = String::from_utf8(fhir_to_hl7(&args(false)).unwrap()).unwrap();
        assert!(lines.starts_with("MSH|"), "{lines}");
        assert!(lines.contains("\nPID|1||123^^^HOSP^MR||Doe^Jane||19800101|F"), "{lines}");
        assert!(lines.contains("|ADT^A08^ADT_A01|") && lines.contains("|2.6"), "{lines}");
        assert!(fhir_to_hl7(&args(true)).unwrap().contains(&b'\r'));
        let bad = FhirToHl7Args { message: "ORU_R99".into(), ..args(false) };
        assert!(fhir_to_hl7(&bad).unwrap_err().to_string().contains("ORU_R99"));
    }

    #[test]
    fn map_reports_every_violation() {
        let dir = tempfile::tempdir().unwrap();
        let rules = write(
            dir.path(),
            "r.yaml",
            "version: 1\nresource_type: Patient\nrules:\n  - {name: mrn, source: id, target: \"identifier[0].value\", required: true}\n  - {name: sex, source: sex, target: gender, transforms: [{map: {table: {M: male, F: female}}}]}\n",
        );
        let good = write(dir.path(), "in.json", r#"{"id": "7", "sex": "F"}"#);
        let out = map(&MapArgs { rules: rules.clone(), input: good, reverse: false }).unwrap().unwrap();
        assert!(out.contains("\"gender\": \"female\""), "{out}");
        let bad = write(dir.path(), "bad.json", r#"{"sex": "Q"}"#);
        let errs = map(&MapArgs { rules, input: bad, reverse: false }).unwrap().unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("rule 'mrn' at input path 'id'"), "{errs:?}");
    }
}
