//! Unit tests of the transform steps and the JavaScript sandbox.

use super::*;

const ADT: &str = "MSH|^~\\&|REG|HOSP|EHR|HOSP|20261121120000||ADT^A04^ADT_A01|CTRL1|P|2.5.1\r\
    EVN|A04|20261121120000\r\
    PID|1||12345^^^HOSP^MR~999^^^SSA^SS||Doe^Jane^Q||19800101|F\r\
    PV1|1|O|CLINIC^1^2\r\
    NTE|1||first\r\
    NTE|2||second\r\
    ZPI|1|custom";

fn msg() -> Message {
    Message::parse(ADT).unwrap()
}

fn steps(toml_text: &str) -> Vec<StepConfig> {
    #[derive(Deserialize)]
    struct Doc {
        transform: Vec<StepConfig>,
    }
    toml::from_str::<Doc>(toml_text).unwrap_or_else(|e| panic!("{e}")).transform
}

fn compile(toml_text: &str) -> Transform {
    Transform::compile(&steps(toml_text), "channel \"t\".transform").unwrap_or_else(|e| panic!("{e}"))
}

fn compile_errors(toml_text: &str) -> Vec<String> {
    match Transform::compile(&steps(toml_text), "t") {
        Ok(t) => panic!("compiled: {t:?}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

/// Applies and returns the message, context and outcome.
fn run(t: &Transform) -> (Message, TransformContext, TransformOutcome) {
    let mut m = msg();
    let mut ctx = TransformContext::new("t", "id-1");
    let outcome = t.apply(&mut m, &mut ctx).unwrap_or_else(|e| panic!("{e}"));
    (m, ctx, outcome)
}

fn run_err(t: &Transform) -> TransformError {
    let mut m = msg();
    let before = m.as_bytes().to_vec();
    let mut ctx = TransformContext::new("t", "id-1");
    let e = t.apply(&mut m, &mut ctx).expect_err("the transform should fail");
    assert_eq!(m.as_bytes(), &before[..], "a failing script leaves the message unchanged");
    e
}

fn js(script: &str) -> Transform {
    Transform::compile(&[StepConfig::Javascript(JavascriptStep::inline(script))], "t").unwrap_or_else(|e| panic!("{e}"))
}

fn js_with(script: &str, timeout_ms: u64, memory_limit_mb: u64) -> Transform {
    let step = JavascriptStep { timeout_ms, memory_limit_mb, ..JavascriptStep::inline(script) };
    Transform::compile(&[StepConfig::Javascript(step)], "t").unwrap_or_else(|e| panic!("{e}"))
}

// --- configuration -------------------------------------------------------

#[test]
fn every_step_type_deserialises_from_toml() {
    let parsed = steps(
        r#"
        [[transform]]
        type = "set"
        path = "MSH-5"
        value = "X"
        [[transform]]
        type = "copy"
        from = "PID-3-1"
        to = "PID-2-1"
        when = 'MSH-9-1 == "ADT"'
        [[transform]]
        type = "delete"
        path = "ZPI"
        [[transform]]
        type = "map"
        path = "PV1-2"
        table = { O = "OUTPATIENT" }
        default = "OTHER"
        [[transform]]
        type = "route"
        to = ["a", "b"]
        [[transform]]
        type = "javascript"
        script = "msg.set('PID-8', 'U')"
        timeout_ms = 250
        "#,
    );
    assert_eq!(parsed.len(), 6);
    assert!(matches!(&parsed[1], StepConfig::Copy(c) if c.when.as_deref() == Some(r#"MSH-9-1 == "ADT""#)));
    let StepConfig::Javascript(j) = &parsed[5] else { panic!() };
    assert_eq!(
        (j.timeout_ms, j.memory_limit_mb, j.stack_limit_kb),
        (250, DEFAULT_MEMORY_LIMIT_MB, DEFAULT_STACK_LIMIT_KB)
    );
}

#[test]
fn unknown_fields_and_types_are_refused() {
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Doc {
        transform: Vec<StepConfig>,
    }
    let e = toml::from_str::<Doc>("[[transform]]\ntype = \"set\"\npath = \"PID-8\"\nvalue = \"F\"\nvalu = 1\n")
        .unwrap_err();
    assert!(e.to_string().contains("unknown field `valu`"), "{e}");
    let e = toml::from_str::<Doc>("[[transform]]\ntype = \"rename\"\npath = \"PID-8\"\n").unwrap_err();
    assert!(e.to_string().contains("unknown variant `rename`"), "{e}");
    let e = toml::from_str::<Doc>("[[transform]]\ntype = \"javascript\"\nscript = \"1\"\ntimeout = 5\n").unwrap_err();
    assert!(e.to_string().contains("unknown field `timeout`"), "{e}");
}

#[test]
fn compile_reports_every_error_with_its_path() {
    let errors = compile_errors(
        r#"
        [[transform]]
        type = "set"
        path = "PID-0"
        value = "x"
        [[transform]]
        type = "set"
        path = "MSH-2"
        value = "x"
        [[transform]]
        type = "copy"
        from = "PID-3"
        to = "PID-2-1"
        [[transform]]
        type = "route"
        to = []
        [[transform]]
        type = "delete"
        path = "MSH"
        [[transform]]
        type = "map"
        path = "PV1-2"
        table = {}
        [[transform]]
        type = "set"
        path = "PID-8"
        value = "x"
        when = 'PID-8 = "F"'
        [[transform]]
        type = "javascript"
        script = "var a = 1;\nvar b = ;"
        [[transform]]
        type = "javascript"
        [[transform]]
        type = "javascript"
        script = "1"
        timeout_ms = 0
        memory_limit_mb = 5000
        "#,
    );
    let expected = [
        "t[0].path: invalid path \"PID-0\"",
        "t[1].path: MSH-2 holds the delimiters",
        "t[2].to: PID-2-1 is deeper than PID-3",
        "t[3].to: lists no destination",
        "t[4].path: the MSH segment cannot be deleted",
        "t[5].table: is empty",
        "t[6].when: column 7",
        "t[7].script: does not compile at line 2",
        "t[8].script: required",
        "t[9].timeout_ms: must be from 1",
        "t[9].memory_limit_mb: must be from 1",
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for (got, want) in errors.iter().zip(expected) {
        assert!(got.starts_with(want), "{got:?} does not start with {want:?}");
    }
}

#[test]
fn check_destinations_names_unknown_route_targets() {
    let t = compile("[[transform]]\ntype = \"route\"\nto = [\"lab\", \"nope\"]\n");
    let mut errors = ConfigErrors::default();
    t.check_destinations(&["lab", "billing"], &mut errors);
    assert_eq!(errors.0.len(), 1);
    assert_eq!(errors.0[0].path, "channel \"t\".transform[0].to[1]");
    assert!(errors.0[0].message.contains("\"nope\""));
}

#[test]
fn script_files_are_loaded_relative_to_the_config_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("upper.js"), "msg.set('PID-5-1', msg.get('PID-5-1').toUpperCase());\n").unwrap();
    let mut s = steps(
        "[[transform]]\ntype = \"javascript\"\nfile = \"upper.js\"\n[[transform]]\ntype = \"javascript\"\nfile = \"missing.js\"\n",
    );
    let mut errors = ConfigErrors::default();
    load_script_files(&mut s, dir.path(), "t", &mut errors);
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!(errors.0[0].path, "t[1].file");
    let t = Transform::compile(&s[..1], "t").unwrap();
    assert_eq!(run(&t).0.get("PID-5-1").as_deref(), Some("DOE"));
}

#[test]
fn an_error_in_a_script_file_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.js");
    std::fs::write(&file, "var ok = 1;\n\nnull.boom;\n").unwrap();
    let t = Transform::compile(&[StepConfig::Javascript(JavascriptStep::from_file(&file))], "t").unwrap();
    match run_err(&t) {
        TransformError::Script { line, message, .. } => {
            assert_eq!(line, Some(3));
            assert!(message.starts_with("TypeError"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Loaded by the config loader, a syntax error names the file's field.
    std::fs::write(
        &file,
        "var ok = 1;
var = 2;
",
    )
    .unwrap();
    let mut s = vec![StepConfig::Javascript(JavascriptStep::from_file("bad.js"))];
    let mut errors = ConfigErrors::default();
    load_script_files(&mut s, dir.path(), "t", &mut errors);
    assert!(errors.is_empty(), "{errors}");
    let errors = Transform::compile(&s, "t").unwrap_err();
    assert_eq!(errors.0[0].path, "t[0].file");
    assert!(errors.0[0].message.starts_with("does not compile at line 2"), "{errors}");
}

// --- built-in steps ------------------------------------------------------

#[test]
fn set_writes_escaped_values_and_creates_what_is_missing() {
    let t = compile(
        "[[transform]]\ntype = \"set\"\npath = \"MSH-5\"\nvalue = \"LAB & CO\"\n\
         [[transform]]\ntype = \"set\"\npath = \"ZZZ-2-3\"\nvalue = \"new\"\n",
    );
    let (m, _, outcome) = run(&t);
    assert_eq!(m.get("MSH-5").as_deref(), Some("LAB & CO"));
    assert_eq!(m.get_raw("MSH-5"), Some(&b"LAB \\T\\ CO"[..]));
    assert_eq!(m.get("ZZZ-2-3").as_deref(), Some("new"));
    assert!(!outcome.is_restricted());
    assert!(outcome.routes_to("anything"));
}

#[test]
fn copy_moves_the_node_with_its_structure() {
    let t = compile(
        "[[transform]]\ntype = \"copy\"\nfrom = \"PV1-3\"\nto = \"PV1-6\"\n\
         [[transform]]\ntype = \"copy\"\nfrom = \"PID-3(2)\"\nto = \"PID-2\"\n\
         [[transform]]\ntype = \"copy\"\nfrom = \"PID-5-1\"\nto = \"NK1-2-1\"\n",
    );
    let (m, _, _) = run(&t);
    assert_eq!(m.get_raw("PV1-6"), Some(&b"CLINIC^1^2"[..]));
    assert_eq!(m.get_raw("PID-2"), Some(&b"999^^^SSA^SS"[..]));
    assert_eq!(m.get("NK1-2-1").as_deref(), Some("Doe"));
}

#[test]
fn copy_from_an_absent_node_clears_the_target_and_creates_nothing() {
    let t = compile(
        "[[transform]]\ntype = \"copy\"\nfrom = \"PID-19\"\nto = \"PID-8\"\n\
         [[transform]]\ntype = \"copy\"\nfrom = \"PID-19\"\nto = \"ZZZ-1\"\n",
    );
    let (m, _, _) = run(&t);
    assert_eq!(m.get("PID-8").as_deref(), Some(""));
    assert!(m.segment("ZZZ").is_none());
}

#[test]
fn delete_clears_nodes_and_removes_segments() {
    let t = compile(
        "[[transform]]\ntype = \"delete\"\npath = \"PID-3(2)\"\n\
         [[transform]]\ntype = \"delete\"\npath = \"PID-5-3\"\n\
         [[transform]]\ntype = \"delete\"\npath = \"ZPI\"\n\
         [[transform]]\ntype = \"delete\"\npath = \"NTE(1)\"\n\
         [[transform]]\ntype = \"delete\"\npath = \"PID-30\"\n",
    );
    let (m, _, _) = run(&t);
    assert_eq!(m.get_raw("PID-3"), Some(&b"12345^^^HOSP^MR~"[..]));
    assert_eq!(m.get_raw("PID-5"), Some(&b"Doe^Jane^"[..]));
    assert!(m.segment("ZPI").is_none());
    let ntes: Vec<_> = m.segments_named("NTE").map(|s| s.get(3).unwrap_or_default().into_owned()).collect();
    assert_eq!(ntes, ["second"]);
    assert_eq!(m.segment("PID").unwrap().field_count(), 8, "deleting an absent field adds nothing");
}

#[test]
fn map_uses_the_table_then_the_default_else_leaves_the_value() {
    let table = "table = { O = \"OUTPATIENT\", I = \"INPATIENT\" }";
    let t = compile(&format!("[[transform]]\ntype = \"map\"\npath = \"PV1-2\"\n{table}\n"));
    assert_eq!(run(&t).0.get("PV1-2").as_deref(), Some("OUTPATIENT"));

    let t = compile(&format!(
        "[[transform]]\ntype = \"map\"\npath = \"PID-8\"\nto = \"ZPI-3\"\n{table}\ndefault = \"UNKNOWN\"\n"
    ));
    let (m, _, _) = run(&t);
    assert_eq!(m.get("ZPI-3").as_deref(), Some("UNKNOWN"));
    assert_eq!(m.get("PID-8").as_deref(), Some("F"), "the source is untouched when `to` is given");

    let t = compile(&format!("[[transform]]\ntype = \"map\"\npath = \"PID-8\"\n{table}\n"));
    assert_eq!(run(&t).0.get("PID-8").as_deref(), Some("F"), "no match and no default: unchanged");
}

#[test]
fn route_narrows_to_the_intersection_and_names_the_step() {
    let t = compile(
        "[[transform]]\ntype = \"route\"\nto = [\"lab\", \"billing\"]\n\
         [[transform]]\ntype = \"route\"\nto = [\"lab\", \"archive\"]\n\
         [[transform]]\ntype = \"route\"\nto = [\"archive\"]\nwhen = 'MSH-9-1 == \"ORU\"'\n",
    );
    let (_, _, outcome) = run(&t);
    assert!(outcome.routes_to("lab"));
    assert!(!outcome.routes_to("billing"));
    assert!(!outcome.routes_to("archive"));
    assert_eq!(outcome.routed_by(), Some("channel \"t\".transform[1] (route)"));
}

#[test]
fn when_skips_a_step_and_sees_earlier_steps() {
    let t = compile(
        "[[transform]]\ntype = \"set\"\npath = \"PID-8\"\nvalue = \"X\"\nwhen = 'MSH-9-2 == \"A01\"'\n\
         [[transform]]\ntype = \"set\"\npath = \"ZPI-2\"\nvalue = \"adt\"\nwhen = 'MSH-9-1 == \"ADT\"'\n\
         [[transform]]\ntype = \"set\"\npath = \"ZPI-3\"\nvalue = \"seen\"\nwhen = 'ZPI-2 == \"adt\"'\n",
    );
    let (m, _, _) = run(&t);
    assert_eq!(m.get("PID-8").as_deref(), Some("F"));
    assert_eq!(m.get("ZPI-2").as_deref(), Some("adt"));
    assert_eq!(m.get("ZPI-3").as_deref(), Some("seen"));
}

#[test]
fn an_unrepresentable_character_is_an_edit_error_naming_the_step() {
    // MSH-18 8859/1 cannot carry a CJK character.
    let t = compile("[[transform]]\ntype = \"set\"\npath = \"PID-5-1\"\nvalue = \"\u{6F22}\"\n");
    let mut m = Message::parse("MSH|^~\\&|A|B|C|D|20261121||ADT^A04|1|P|2.5||||||8859/1\rPID|1").unwrap();
    let e = t.apply(&mut m, &mut TransformContext::default()).unwrap_err();
    assert!(
        matches!(&e, TransformError::Edit { step, path, .. } if step == "channel \"t\".transform[0]" && path == "PID-5-1"),
        "{e:?}"
    );
    assert_eq!(e.class(), FailureClass::Permanent);
}

// --- JavaScript ----------------------------------------------------------

#[test]
fn js_reads_and_writes_the_message() {
    let t = js(r#"
        var family = msg.get("PID-5-1");
        msg.set("PID-5-1", family.toUpperCase());
        msg.set("PID-7", 19991231);
        msg.set("PID-6", null);
        msg.set("ZPI-3", "a|b^c");
        if (!msg.exists("PID-19") && msg.exists("PID-8") && msg.exists("ZPI") && !msg.exists("NK1")) {
            msg.set("ZPI-4", "exists ok");
        }
        msg.set("ZPI-5", String(msg.count("NTE")));
        msg.delete("NTE(2)");
        msg.delete("PID-3(2)");
        msg.addSegment("ZX1|1|added");
        msg.set("ZPI-6", msg.get("PID-19") === "" ? "absent reads empty" : "?");
        msg.set("ZPI-7", msg.toString().split("\r")[0].substring(0, 8));
    "#);
    let (m, _, _) = run(&t);
    assert_eq!(m.get("PID-5-1").as_deref(), Some("DOE"));
    assert_eq!(m.get("PID-7").as_deref(), Some("19991231"));
    assert_eq!(m.get("ZPI-3").as_deref(), Some("a|b^c"));
    assert_eq!(m.get_raw("ZPI-3"), Some(&b"a\\F\\b\\S\\c"[..]));
    assert_eq!(m.get("ZPI-4").as_deref(), Some("exists ok"));
    assert_eq!(m.get("ZPI-5").as_deref(), Some("2"));
    assert_eq!(m.segments_named("NTE").count(), 1);
    assert_eq!(m.get_raw("PID-3"), Some(&b"12345^^^HOSP^MR~"[..]));
    assert_eq!(m.get("ZX1-2").as_deref(), Some("added"));
    assert_eq!(m.get("ZPI-6").as_deref(), Some("absent reads empty"));
    assert_eq!(m.get("ZPI-7").as_deref(), Some("MSH|^~\\&"));
}

#[test]
fn js_top_level_return_ends_the_script() {
    let t = js("msg.set('ZPI-2', 'before');\nif (true) return;\nmsg.set('ZPI-2', 'after');");
    assert_eq!(run(&t).0.get("ZPI-2").as_deref(), Some("before"));
}

#[test]
fn js_channel_map_carries_values_to_later_steps() {
    let first = StepConfig::Javascript(JavascriptStep::inline(
        "channelMap.put('mrn', msg.get('PID-3-1')); channelMap.put('n', 42); channelMap.put('gone', 'x'); channelMap.remove('gone');",
    ));
    let second = StepConfig::Javascript(JavascriptStep::inline(
        "if (channelMap.containsKey('mrn') && channelMap.get('n') === '42' && channelMap.get('gone') === undefined) msg.set('ZPI-2', channelMap.get('mrn'));",
    ));
    let t = Transform::compile(&[first, second], "t").unwrap();
    let (m, ctx, _) = run(&t);
    assert_eq!(m.get("ZPI-2").as_deref(), Some("12345"));
    assert_eq!(ctx.channel_map.get("mrn").map(String::as_str), Some("12345"));
    assert_eq!(ctx.channel_map.len(), 2);
}

#[test]
fn js_destination_set_routes_like_mirth() {
    let t = js("destinationSet.removeAllExcept(['lab', 'archive']); destinationSet.remove('archive');");
    let (_, _, outcome) = run(&t);
    assert!(outcome.routes_to("lab"));
    assert!(!outcome.routes_to("archive"));
    assert!(!outcome.routes_to("billing"));
    assert_eq!(outcome.routed_by(), Some("t[0] (destinationSet.remove)"));

    let (_, _, outcome) = run(&js("destinationSet.removeAll();"));
    assert!(!outcome.routes_to("lab"));
    let (_, _, outcome) = run(&js("destinationSet.removeAllExcept('lab');"));
    assert!(outcome.routes_to("lab") && !outcome.routes_to("x"));
}

#[test]
fn js_logger_accepts_every_level() {
    let t = js("logger.debug('d'); logger.info('i'); logger.warn({}); logger.error(); msg.set('ZPI-2', 'logged');");
    assert_eq!(run(&t).0.get("ZPI-2").as_deref(), Some("logged"));
}

#[test]
fn js_error_reports_message_and_line() {
    let t = js("var a = 1;\nvar b = 2;\nthrow new Error('no MRN');\n");
    let e = run_err(&t);
    assert_eq!(
        e,
        TransformError::Script {
            step: "t[0]".into(),
            message: "Error: no MRN".into(),
            line: Some(3),
            column: Some(11)
        }
    );
    assert_eq!(e.to_string(), "t[0]: script error at line 3, column 11: Error: no MRN");
    assert_eq!(e.class(), FailureClass::Permanent);
}

#[test]
fn js_runtime_type_error_reports_its_line_and_column_on_line_one() {
    match run_err(&js("null.x;")) {
        TransformError::Script { message, line, column, .. } => {
            assert!(message.starts_with("TypeError: "), "{message}");
            assert_eq!((line, column), (Some(1), Some(1)), "line 1 columns are corrected for the wrapper");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn js_native_errors_are_thrown_at_the_calling_line() {
    match run_err(&js("// set a bad path\n\nmsg.set('PID-0', 'x');")) {
        TransformError::Script { message, line, .. } => {
            assert_eq!(line, Some(3));
            assert!(message.contains("msg.set: invalid path \"PID-0\""), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Scripts can catch them.
    let t = js("try { msg.set('MSH-1', 'x') } catch (e) { msg.set('ZPI-2', 'caught') }");
    assert_eq!(run(&t).0.get("ZPI-2").as_deref(), Some("caught"));
}

#[test]
fn js_thrown_strings_are_reported() {
    match run_err(&js("throw 'plain string';")) {
        TransformError::Script { message, .. } => assert_eq!(message, "uncaught exception: plain string"),
        other => panic!("{other:?}"),
    }
}

/// Regression: an exception raised in a promise job (an `async` function,
/// a `.then` callback, `queueMicrotask`) was dropped by the job loop and an
/// unhandled rejection went unnoticed, so the message was sent as if the
/// script had succeeded. Each must fail the run like a synchronous throw,
/// with the script's message and line.
#[test]
fn js_errors_in_promise_jobs_fail_the_run_with_message_and_line() {
    let cases = [
        (
            "async function check() {\n  await null;\n  throw new Error('async no MRN');\n}\ncheck();",
            "Error: async no MRN",
            3,
        ),
        (
            "// rejected at once\nasync function check() {\n  throw new TypeError('no PID');\n}\ncheck();",
            "TypeError: no PID",
            3,
        ),
        ("Promise.resolve(1).then(function () {\n  null.x;\n});", "TypeError: ", 2),
        ("var p = Promise.reject(new RangeError('bad range'));", "RangeError: bad range", 1),
        ("queueMicrotask(function () {\n\n  throw new Error('in a microtask');\n});", "Error: in a microtask", 3),
    ];
    for (script, expected, expected_line) in cases {
        match run_err(&js(script)) {
            TransformError::Script { message, line, .. } => {
                assert!(message.starts_with(expected), "{script:?}: {message}");
                assert_eq!(line, Some(expected_line), "{script:?}: {message}");
            }
            other => panic!("{script:?}: {other:?}"),
        }
    }
    // A rejected value that is not an Error is reported as a thrown one.
    match run_err(&js("Promise.reject('plain reason');")) {
        TransformError::Script { message, .. } => assert_eq!(message, "uncaught exception: plain reason"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn js_rejections_the_script_handles_do_not_fail_the_run() {
    let t = js("async function late() { await null; msg.set('ZPI-2', 'after await'); }\n\
                var p = Promise.reject(new Error('handled'));\n\
                late().then(function () { return p; }).catch(function (e) { msg.set('ZPI-3', e.message); });");
    let (m, _, _) = run(&t);
    assert_eq!(m.get("ZPI-2").as_deref(), Some("after await"));
    assert_eq!(m.get("ZPI-3").as_deref(), Some("handled"));
}

#[test]
fn js_runaway_loop_is_stopped_by_the_time_limit() {
    let e = run_err(&js_with("var i = 0;\nwhile (true) { i++; }", 200, 16));
    assert_eq!(e, TransformError::Timeout { step: "t[0]".into(), limit: Duration::from_millis(200) });
    // Also inside promise callbacks, which run after the script body.
    let e = run_err(&js_with("Promise.resolve().then(function () { for (;;) {} });", 200, 16));
    assert!(matches!(e, TransformError::Timeout { .. }), "{e:?}");
    // A script cannot swallow the interrupt with try/catch.
    let e = run_err(&js_with("for (;;) { try { for (;;) {} } catch (e) {} }", 200, 16));
    assert!(matches!(e, TransformError::Timeout { .. }), "{e:?}");
}

#[test]
fn js_memory_bomb_is_stopped_by_the_memory_limit() {
    for bomb in [
        "var a = [];\nwhile (true) { a.push('xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' + a.length); }",
        "var a = [];\nwhile (true) { a.push({ n: a.length }); }",
        "var s = 'x'.repeat(64 * 1024 * 1024);",
        "var a = new Array(1e9).fill(1);",
    ] {
        let e = run_err(&js_with(bomb, 10_000, 8));
        assert_eq!(e, TransformError::MemoryLimit { step: "t[0]".into(), limit_bytes: 8 * 1024 * 1024 }, "{bomb}");
    }
}

#[test]
fn js_cannot_grow_the_message_or_channel_map_past_the_memory_limit() {
    // Both live outside QuickJS's heap; the same limit applies to them.
    for grower in [
        "var chunk = 'x'.repeat(512 * 1024);\nfor (;;) { msg.addSegment('ZZZ|' + chunk); }",
        "var chunk = 'x'.repeat(512 * 1024);\nfor (var i = 0; ; i++) { channelMap.put('k' + i, chunk); }",
        "var chunk = 'x'.repeat(512 * 1024);\nfor (var i = 1; ; i++) { try { msg.set('ZZZ(' + i + ')-1', chunk); } catch (e) {} }",
    ] {
        // The last one catches the refusal and loops on until its deadline:
        // the refusal is still what is reported.
        let e = run_err(&js_with(grower, 500, 8));
        assert_eq!(e, TransformError::MemoryLimit { step: "t[0]".into(), limit_bytes: 8 * 1024 * 1024 }, "{grower}");
    }
}

#[test]
fn js_deep_recursion_is_stopped_by_the_stack_limit() {
    match run_err(&js("function f(n) { return f(n + 1) + 1; }\nf(0);")) {
        TransformError::Script { message, line, .. } => {
            assert!(message.contains("RangeError") && message.contains("stack"), "{message}");
            assert_eq!(line, Some(1));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn js_cannot_reach_std_os_require_or_modules() {
    // None of the host objects of quickjs-libc or Node exist.
    let t = js(r#"
        var seen = [typeof std, typeof os, typeof require, typeof process, typeof print,
                    typeof console, typeof fetch, typeof XMLHttpRequest, typeof setTimeout,
                    typeof scriptArgs, typeof module, typeof exports].join(",");
        msg.set("ZPI-2", seen);
        import("os").then(function () { channelMap.put("import", "loaded"); },
                          function (e) { channelMap.put("import", "refused: " + e); });
    "#);
    let (m, ctx, _) = run(&t);
    assert_eq!(m.get("ZPI-2").as_deref(), Some(["undefined"; 12].join(",").as_str()));
    let import = ctx.channel_map.get("import").cloned().unwrap_or_default();
    assert!(import.starts_with("refused: "), "dynamic import must fail: {import}");

    // A static import is not even valid in a script.
    let e = Transform::compile(&[StepConfig::Javascript(JavascriptStep::inline("import * as std from 'std';"))], "t")
        .unwrap_err();
    assert!(e.to_string().contains("does not compile"), "{e}");
}

#[test]
fn js_runs_share_nothing() {
    let t = js("if (typeof leaked !== 'undefined') msg.set('ZPI-2', 'leaked'); leaked = 1; Array.prototype.x = 1;");
    for _ in 0..3 {
        let (m, _, _) = run(&t);
        assert_eq!(m.get("ZPI-2").as_deref(), Some("custom"), "a global from one run is visible in the next");
    }
}

#[test]
fn js_failure_leaves_context_and_routing_unchanged() {
    let t = js("channelMap.put('k', 'v'); destinationSet.removeAll(); msg.set('PID-8', 'M'); throw new Error('late');");
    let mut m = msg();
    let mut ctx = TransformContext::new("t", "id");
    assert!(t.apply(&mut m, &mut ctx).is_err());
    assert!(ctx.channel_map.is_empty());
    assert_eq!(m.get("PID-8").as_deref(), Some("F"));
}

#[test]
fn transforms_are_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<Transform>();
    check::<TransformError>();
    check::<TransformContext>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_runs_concurrently_from_many_tasks() {
    let t = Arc::new(js(
        "var n = Number(channelMap.get('n'));\nvar s = 0; for (var i = 0; i < 10000; i++) { s += i % 7; }\nmsg.set('ZPI-2', 'task ' + n + ' ' + s);",
    ));
    let mut tasks = Vec::new();
    for n in 0..64 {
        let t = Arc::clone(&t);
        tasks.push(tokio::spawn(async move {
            let mut ctx = TransformContext::new("t", &format!("id-{n}"));
            ctx.channel_map.insert("n".into(), n.to_string());
            let (m, _, _) = t.apply_blocking(msg(), ctx).await.unwrap();
            (n, m.get("ZPI-2").map(|v| v.into_owned()))
        }));
    }
    let expected_sum: u32 = (0..10000).map(|i| i % 7).sum();
    for task in tasks {
        let (n, value) = task.await.unwrap();
        assert_eq!(value, Some(format!("task {n} {expected_sum}")));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_slow_script_does_not_stall_the_runtime() {
    // One thread: if the script ran on it, the ticker could not advance
    // until the script's time limit stopped it.
    let t = Arc::new(js_with("for (;;) {}", 2000, 16));
    let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = Arc::clone(&ticks);
    let ticker = tokio::spawn(async move {
        loop {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::task::yield_now().await;
        }
    });
    let script = tokio::spawn(Arc::clone(&t).apply_blocking(msg(), TransformContext::default()));
    // Wait until the ticker has run many times while the script is running.
    while ticks.load(std::sync::atomic::Ordering::Relaxed) < 1000 {
        tokio::task::yield_now().await;
    }
    assert!(!script.is_finished(), "the script should still be running in the background");
    ticker.abort();
    assert!(matches!(script.await.unwrap(), Err(TransformError::Timeout { .. })));
}

#[tokio::test]
async fn apply_blocking_runs_builtin_steps_inline() {
    let t = Arc::new(compile("[[transform]]\ntype = \"set\"\npath = \"PID-8\"\nvalue = \"U\"\n"));
    assert!(!t.has_scripts());
    let (m, _, _) = t.apply_blocking(msg(), TransformContext::default()).await.unwrap();
    assert_eq!(m.get("PID-8").as_deref(), Some("U"));
}

// ---------------------------------------------------------------------------
// hl7_to_fhir.

/// The Bundle an `hl7_to_fhir` transform made of [`ADT`].
fn converted_bundle(t: &Transform) -> serde_json::Value {
    let (m, _, outcome) = run(t);
    assert_eq!(m.as_bytes(), msg().as_bytes(), "the conversion reads the message and leaves it as it was");
    let converted = outcome.converted().expect("the conversion step left its output");
    assert_eq!(converted.content_type, "application/fhir+json");
    serde_json::from_slice(&converted.content).unwrap()
}

fn patient(bundle: &serde_json::Value) -> &serde_json::Value {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == "Patient")
        .expect("a Patient entry")
}

#[test]
fn hl7_to_fhir_sends_a_transaction_bundle_with_the_configured_identifier_system() {
    let t = compile(
        r#"
        [[transform]]
        type = "hl7_to_fhir"
        identifier_systems = { HOSP = "https://hospital.example/mrn" }
        "#,
    );
    let bundle = converted_bundle(&t);
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "transaction");
    let ids = patient(&bundle)["identifier"].as_array().unwrap();
    let mrn = ids.iter().find(|i| i["value"] == "12345").expect("the MRN from PID-3");
    assert_eq!(mrn["system"], "https://hospital.example/mrn");
    // Without an entry the authority gets the default prefix.
    let ss = ids.iter().find(|i| i["value"] == "999").expect("the second PID-3 repetition");
    assert_eq!(ss["system"], "urn:plexus:authority:SSA");
    assert_eq!(patient(&bundle)["name"][0]["family"], "Doe");
}

#[test]
fn hl7_to_fhir_code_tables_and_prefix_override_the_defaults() {
    let defaults = converted_bundle(&compile("[[transform]]\ntype = \"hl7_to_fhir\""));
    assert_eq!(patient(&defaults)["gender"], "female");
    let t = compile(
        r#"
        [[transform]]
        type = "hl7_to_fhir"
        unknown_authority_prefix = "https://ids.example/"
        code_tables = { "0001" = { F = "other" } }
        "#,
    );
    let bundle = converted_bundle(&t);
    assert_eq!(patient(&bundle)["gender"], "other");
    let ids = patient(&bundle)["identifier"].as_array().unwrap();
    assert!(ids.iter().any(|i| i["system"] == "https://ids.example/SSA"), "{ids:?}");
}

#[test]
fn hl7_to_fhir_sees_the_edits_of_earlier_steps_and_route_may_follow() {
    let t = compile(
        r#"
        [[transform]]
        type = "set"
        path = "PID-5-1"
        value = "Roe"

        [[transform]]
        type = "hl7_to_fhir"

        [[transform]]
        type = "route"
        to = ["fhir"]
        "#,
    );
    let mut m = msg();
    let mut ctx = TransformContext::new("t", "id-1");
    let outcome = t.apply(&mut m, &mut ctx).unwrap();
    let bundle: serde_json::Value = serde_json::from_slice(&outcome.converted().unwrap().content).unwrap();
    assert_eq!(patient(&bundle)["name"][0]["family"], "Roe");
    assert!(outcome.routes_to("fhir") && !outcome.routes_to("archive"));
}

#[test]
fn hl7_to_fhir_with_a_when_that_does_not_match_leaves_no_output() {
    let t = compile(
        r#"
        [[transform]]
        type = "hl7_to_fhir"
        when = 'MSH-9-1 == "ORU"'
        "#,
    );
    let (_, _, outcome) = run(&t);
    assert_eq!(outcome.converted(), None);
}

#[test]
fn hl7_to_fhir_of_an_unsupported_event_fails_permanently_naming_it() {
    let t = Transform::compile(&steps("[[transform]]\ntype = \"hl7_to_fhir\""), "channel \"t\".transform").unwrap();
    let mut m = Message::parse(ADT.replace("ADT^A04^ADT_A01", "ADT^A17^ADT_A17").as_str()).unwrap();
    let mut ctx = TransformContext::new("t", "id-1");
    let e = t.apply(&mut m, &mut ctx).expect_err("A17 has no converter");
    assert_eq!(e.step(), "channel \"t\".transform[0]");
    assert_eq!(e.kind(), "convert_error");
    assert_eq!(e.class(), FailureClass::Permanent);
    let text = e.to_string();
    assert!(
        text.starts_with("channel \"t\".transform[0]: cannot convert the message: unsupported message type ADT^A17"),
        "{text}"
    );
}

#[test]
fn hl7_to_fhir_options_are_checked_at_compile_time_with_their_paths() {
    let errors = compile_errors(
        r#"
        [[transform]]
        type = "hl7_to_fhir"
        identifier_systems = { HOSP = "hosp-mrn", LAB = "urn:oid:1.2.3" }
        code_systems = { LOCAL = "codes" }
        default_offset = "CET"
        "#,
    );
    assert_eq!(
        errors,
        [
            "t[0].identifier_systems.HOSP: \"hosp-mrn\" is not a URI (e.g. \"urn:oid:1.2.3\" or \"https://example.org/ids\")",
            "t[0].code_systems.LOCAL: \"codes\" is not a URI (e.g. \"urn:oid:1.2.3\" or \"https://example.org/ids\")",
            "t[0].default_offset: \"CET\" is not +hh:mm or -hh:mm",
        ]
    );
}

#[test]
fn only_route_steps_may_follow_a_conversion() {
    let errors = compile_errors(
        r#"
        [[transform]]
        type = "hl7_to_fhir"

        [[transform]]
        type = "route"
        to = ["fhir"]

        [[transform]]
        type = "set"
        path = "MSH-5"
        value = "X"

        [[transform]]
        type = "hl7_to_fhir"
        "#,
    );
    let expected = |i: usize| {
        format!(
            "t[{i}]: comes after the conversion at t[0]; only route steps may follow a conversion (the HL7 v2 message is \
             no longer what is sent): move this step before it"
        )
    };
    assert_eq!(errors, [expected(2), expected(3)]);
}

#[test]
fn hl7_to_fhir_converts_an_oru_to_a_report_with_its_observation() {
    let t = compile("[[transform]]\ntype = \"hl7_to_fhir\"");
    let oru = "MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261121120000+0100||ORU^R01^ORU_R01|L1|P|2.5.1\r\
               PID|1||12345^^^HOSP^MR||Doe^Jane||19800101|F\r\
               OBR|1||F1|2345-7^Glucose^LN|||20261121110000+0100\r\
               OBX|1|NM|2345-7^Glucose^LN||95|mg/dL^mg/dL^UCUM|70-99|N|||F\r";
    let mut m = Message::parse(oru).unwrap();
    let mut ctx = TransformContext::new("t", "id-1");
    let outcome = t.apply(&mut m, &mut ctx).unwrap();
    let bundle: serde_json::Value = serde_json::from_slice(&outcome.converted().unwrap().content).unwrap();
    let resources: Vec<&serde_json::Value> =
        bundle["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
    assert!(resources.iter().any(|r| r["resourceType"] == "DiagnosticReport"), "{bundle}");
    let obs = resources.iter().find(|r| r["resourceType"] == "Observation").expect("an Observation from OBX");
    assert_eq!(obs["code"]["coding"][0]["system"], "http://loinc.org");
    assert_eq!(obs["code"]["coding"][0]["code"], "2345-7");
    assert_eq!(obs["valueQuantity"]["value"], 95);
    assert_eq!(obs["status"], "final");
}
