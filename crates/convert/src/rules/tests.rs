use super::*;
use serde_json::json;

const PATIENT_YAML: &str = r#"
version: 1
name: pms-patient
resource_type: Patient
rules:
  - name: mrn
    source: patient.mrn
    target: identifier[0].value
    required: true
    validate: { regex: "^[0-9]{4,10}$" }
  - name: mrn system
    value: "urn:oid:1.2.3.4"
    target: identifier[0].system
  - name: family
    source: patient.last
    target: name[0].family
    transforms: [trim]
  - name: given
    source: patient.first
    target: name[0].given[0]
  - name: display name
    sources: [patient.first, patient.last]
    target: name[0].text
    direction: forward
    transforms: [{ template: "{patient.first} {patient.last}" }]
  - name: sex
    source: patient.sex
    target: gender
    validate: { enum: [M, F, U] }
    transforms:
      - map: { table: { M: male, F: female }, default: unknown, reverse: { male: M, female: F }, reverse_default: U }
  - name: birth date
    source: patient.dob
    target: birthDate
    transforms:
      - date: { from: "%m/%d/%Y", to: "%Y-%m-%d" }
  - name: phone
    source: contact.phone
    target: telecom[system=phone].value
  - name: email
    source: contact.email
    target: telecom[system=email].value
    transforms: [lower]
  - name: other phones
    source: contact.others[*].number
    target: contact[*].telecom[0].value
  - name: active
    source: patient.active
    target: active
    default: true
    transforms: [boolean]
"#;

fn input() -> Value {
    json!({
        "patient": {"mrn": "004711", "last": " Finn ", "first": "Huck", "sex": "M",
                    "dob": "08/15/1963", "active": "Y"},
        "contact": {"phone": "555-0100", "email": "HUCK@EXAMPLE.ORG",
                    "others": [{"number": "555-0101"}, {"number": "555-0102"}]}
    })
}

#[test]
fn yaml_rules_map_pms_json_to_a_fhir_patient() {
    let rules = MappingRules::from_yaml(PATIENT_YAML).unwrap();
    assert_eq!(rules.name(), Some("pms-patient"));
    let out = rules.apply(&input()).unwrap();
    assert_eq!(
        out,
        json!({
            "resourceType": "Patient",
            "identifier": [{"value": "004711", "system": "urn:oid:1.2.3.4"}],
            "name": [{"family": "Finn", "given": ["Huck"], "text": "Huck  Finn"}],
            "gender": "male",
            "birthDate": "1963-08-15",
            "telecom": [{"system": "phone", "value": "555-0100"},
                        {"system": "email", "value": "huck@example.org"}],
            "contact": [{"telecom": [{"value": "555-0101"}]}, {"telecom": [{"value": "555-0102"}]}],
            "active": true
        })
    );
}

#[test]
fn reverse_maps_fhir_back_through_reverse_tables_and_swapped_date_formats() {
    let rules = MappingRules::from_yaml(PATIENT_YAML).unwrap();
    let fhir = rules.apply(&input()).unwrap();
    let back = rules.apply_reverse(&fhir).unwrap();
    assert_eq!(back["patient"]["mrn"], "004711");
    assert_eq!(back["patient"]["last"], "Finn");
    assert_eq!(back["patient"]["sex"], "M");
    assert_eq!(back["patient"]["dob"], "08/15/1963");
    assert_eq!(back["contact"]["phone"], "555-0100");
    assert_eq!(back["contact"]["others"], json!([{"number": "555-0101"}, {"number": "555-0102"}]));
    // The template rule is forward only and the constant has no reverse.
    assert!(back["patient"].get("first_last").is_none());

    let other = json!({"resourceType": "Patient", "identifier": [{"value": "1234"}], "gender": "other"});
    assert_eq!(rules.apply_reverse(&other).unwrap()["patient"]["sex"], "U");
}

#[test]
fn violations_name_the_rule_and_input_path_and_are_all_reported() {
    let rules = MappingRules::from_yaml(PATIENT_YAML).unwrap();
    let bad = json!({"patient": {"sex": "X", "dob": "1963-08-15"}});
    let err = rules.apply(&bad).unwrap_err();
    let RulesError::Violations(v) = &err else { panic!("expected violations, got {err}") };
    let found: Vec<(&str, &str)> = v.iter().map(|v| (v.rule.as_str(), v.path.as_str())).collect();
    assert_eq!(found, vec![("mrn", "patient.mrn"), ("sex", "patient.sex"), ("birth date", "patient.dob")]);
    assert_eq!(v[0].message, "required value is missing");
    assert_eq!(v[1].message, "value is not one of [M, F, U]");
    assert!(
        err.to_string().contains("rule 'birth date' at input path 'patient.dob': value does not match the date format")
    );
    assert!(!err.to_string().contains("1963"), "the refused birth date is not echoed: {err}");

    let bad_mrn = json!({"patient": {"mrn": "12"}});
    let err = rules.apply(&bad_mrn).unwrap_err().to_string();
    assert_eq!(err, "rule 'mrn' at input path 'patient.mrn': value does not match the pattern /^[0-9]{4,10}$/");
}

#[test]
fn reverse_checks_resource_type_and_required_target() {
    let rules = MappingRules::from_yaml(PATIENT_YAML).unwrap();
    let err = rules.apply_reverse(&json!({"resourceType": "Observation"})).unwrap_err().to_string();
    assert!(err.contains("expected resourceType 'Patient', found Observation"), "{err}");
    assert!(err.contains("rule 'mrn' at input path 'identifier[0].value': required value is missing"), "{err}");
}

#[test]
fn toml_rules_load_the_same_way() {
    let toml = r#"
        version = 1
        resource_type = "Patient"
        [[rules]]
        name = "sex"
        source = "sex"
        target = "gender"
        transforms = [{ map = { table = { M = "male", F = "female" } } }, "trim"]

        [[rules]]
        sources = ["first", "middle", "last"]
        target = "name[0].text"
        transforms = [{ concat = " " }]

        [[rules]]
        source = "fullname"
        targets = ["name[1].given[0]", "name[1].family"]
        transforms = [{ split = " " }]
    "#;
    let rules = MappingRules::from_toml(toml).unwrap();
    let out =
        rules.apply(&json!({"sex": "F", "first": "Mary", "last": "Shelley", "fullname": "Ada Lovelace"})).unwrap();
    assert_eq!(
        out,
        json!({"resourceType": "Patient", "gender": "female",
               "name": [{"text": "Mary Shelley"}, {"given": ["Ada"], "family": "Lovelace"}]})
    );
    let back = rules.apply_reverse(&out).unwrap();
    assert_eq!(
        back,
        json!({"sex": "F", "first": "Mary", "middle": "Shelley", "fullname": "Ada Lovelace"}),
        "concat reverses by splitting in source order; absent parts cannot be placed"
    );
}

#[test]
fn definition_errors_are_all_reported_at_load() {
    let yaml = r#"
version: 2
rules:
  - name: no source
    target: a
  - name: bad path
    source: "a..b"
    target: b
  - name: bad regex
    source: a
    target: b
    validate: { regex: "([" }
  - name: lossy table both ways
    source: a
    target: b
    transforms: [{ map: { table: { A: x, B: x } } }]
  - name: template without sources
    source: a
    target: b
    direction: forward
    transforms: [{ template: "{a}" }]
  - name: unknown placeholder
    sources: [a, b]
    target: c
    direction: forward
    transforms: [{ template: "{a} {zz}" }]
  - name: bad date
    source: a
    target: b
    transforms: [{ date: { from: "%Q", to: "%Y" } }]
  - name: each one side
    source: "a[*].b"
    target: c
"#;
    let err = MappingRules::from_yaml(yaml).unwrap_err();
    let RulesError::Definition(errs) = &err else { panic!("expected definition errors, got {err}") };
    let rules: Vec<&str> = errs.iter().map(|e| e.rule.as_str()).collect();
    assert_eq!(
        rules,
        vec![
            "(file)",
            "no source",
            "bad path",
            "bad regex",
            "lossy table both ways",
            "template without sources",
            "unknown placeholder",
            "bad date",
            "each one side"
        ]
    );
    assert!(errs[2].message.contains("path 'a..b': empty member name"));
    assert!(errs[4].message.contains("cannot be inverted"));
}

#[test]
fn syntax_errors_say_which_format() {
    let err = MappingRules::from_yaml("version: [").unwrap_err();
    assert!(matches!(err, RulesError::Syntax { format: "yaml", .. }), "{err}");
    let err = MappingRules::from_toml("version = 1\nrules = []\nbogus = 1").unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
}

#[test]
fn rules_embed_in_a_serde_config() {
    #[derive(Deserialize)]
    struct Step {
        rules: MappingRules,
    }
    let step: Step = serde_json::from_value(json!({
        "rules": {"version": 1, "rules": [{"source": "a", "target": "b"}]}
    }))
    .unwrap();
    assert_eq!(step.rules.apply(&json!({"a": 1})).unwrap(), json!({"b": 1}));
    let bad = serde_json::from_value::<Step>(json!({"rules": {"version": 1, "rules": [{"target": "b"}]}}));
    assert!(bad.is_err());
}

#[test]
fn writing_through_a_scalar_is_a_violation_not_a_panic() {
    let rules =
        MappingRules::from_yaml("version: 1\nrules:\n  - {source: a, target: x}\n  - {source: b, target: x.y}\n")
            .unwrap();
    let err = rules.apply(&json!({"a": "s", "b": "t"})).unwrap_err().to_string();
    assert!(err.contains("cannot write 'x.y'"), "{err}");
}

/// An empty string (or empty object or array) is no value: the output
/// prunes it, so a required rule must report it missing rather than let
/// the output lose the element, an optional rule writes nothing (no
/// `telecom` left with a `system` and no value), and a default stands in.
#[test]
fn empty_values_count_as_absent() {
    let rules = MappingRules::from_yaml(PATIENT_YAML).unwrap();
    let blank = json!({
        "patient": {"mrn": "", "sex": "", "active": "", "last": "  ", "first": []},
        "contact": {"phone": "", "email": ""}
    });
    let err = rules.apply(&blank).unwrap_err();
    let RulesError::Violations(v) = &err else { panic!("expected violations, got {err}") };
    let found: Vec<(&str, &str, &str)> =
        v.iter().map(|v| (v.rule.as_str(), v.path.as_str(), v.message.as_str())).collect();
    assert_eq!(found, vec![("mrn", "patient.mrn", "required value is missing")]);

    let mut optional = blank.clone();
    optional["patient"]["mrn"] = json!("004711");
    let out = rules.apply(&optional).unwrap();
    assert_eq!(
        out,
        json!({"resourceType": "Patient",
               "identifier": [{"value": "004711", "system": "urn:oid:1.2.3.4"}],
               "active": true})
    );

    // Reverse: an empty target value is missing too.
    let err = rules.apply_reverse(&json!({"resourceType": "Patient", "identifier": [{"value": ""}]})).unwrap_err();
    assert!(err.to_string().contains("rule 'mrn' at input path 'identifier[0].value': required value is missing"));
}

/// A template fills each placeholder from its source once: a value that
/// happens to hold another placeholder's text (`{last}`) is written as it
/// is, not filled in turn.
#[test]
fn template_values_are_not_read_as_placeholders() {
    let yaml = r#"
version: 1
rules:
  - sources: [first, last]
    target: text
    direction: forward
    transforms: [{ template: "{first} {last}" }]
"#;
    let rules = MappingRules::from_yaml(yaml).unwrap();
    let out = rules.apply(&json!({"first": "{last}", "last": "Finn"})).unwrap();
    assert_eq!(out, json!({"text": "{last} Finn"}));
    let out = rules.apply(&json!({"first": "Huck", "last": "{first}"})).unwrap();
    assert_eq!(out, json!({"text": "Huck {first}"}));
}
