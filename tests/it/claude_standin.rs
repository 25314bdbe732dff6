//! The bundled stand-in `examples/claude` against the real Claude Code
//! CLI's shapes, without the CLI (no npm, no network): its result objects
//! (`-p --output-format json`, and the last line of `stream-json`) must
//! have the top-level keys of the real one, and the same JSON types.
//! `tests/fixtures/claude-2.1.197-not-logged-in.json` is what Claude Code
//! 2.1.197 printed, ids as they came, with no credentials (`make
//! test-claude` checks that it still does, in tests/claude_cli.rs).
//!
//! The fixture is a `success`-subtype object, the shape of every answer
//! but the error subtypes: a success, a usage limit, a 401, a 529. An
//! error subtype (`error_max_turns`, `error_max_budget_usd`,
//! `error_during_execution`) is, in 2.1.197's code, the same object with
//! `errors` (an array of strings) in place of `result` and
//! `api_error_status`; the CLI cannot produce one without a login, so
//! that shape is checked from the fixture with that change.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::*;
use serde_json::{Map, Value};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn standin() -> PathBuf {
    root().join("examples/claude")
}

/// The stand-in run directly with `args`, `env` (nothing of the test
/// runner's that it reads) and stdin empty: its exit code and stdout.
fn run_standin(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new("sh");
    cmd.arg(standin())
        .args(args)
        .env_remove("STANDIN_LIMIT_UNTIL")
        .env_remove("STANDIN_LOGIN_FILE")
        .env_remove("STANDIN_ARGS")
        .env_remove("AGENT_SLEEP")
        .env("STANDIN_BIG_BYTES", "10")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = cmd.spawn().expect("start the stand-in");
    let out = finish(child, b"", &format!("examples/claude {args:?}"));
    (out.status.code().unwrap_or(-1), stdout(&out))
}

/// The result object the stand-in prints for `prompt`.
fn result_of(prompt: &str, format: &[&str], env: &[(&str, &str)]) -> (i32, Map<String, Value>) {
    let mut args = vec!["-p", "--max-turns", "3"];
    args.extend_from_slice(format);
    args.extend(["--", prompt]);
    let (code, out) = run_standin(&args, env);
    let last = out.lines().last().unwrap_or_default();
    match serde_json::from_str(last) {
        Ok(Value::Object(object)) => (code, object),
        _ => panic!("the stand-in printed no JSON object for {prompt:?}:\n{out}"),
    }
}

/// The fixture as an error subtype has it: `errors` for `result` and
/// `api_error_status`.
fn error_shape(fixture: &Map<String, Value>) -> Map<String, Value> {
    let mut shape = fixture.clone();
    shape.remove("result");
    shape.remove("api_error_status");
    shape.insert("errors".into(), Value::Array(vec!["words".into()]));
    shape
}

#[test]
fn the_fixture_is_the_real_clis_not_logged_in_answer() {
    let f = claude_fixture();
    assert_eq!(f["type"], "result");
    assert_eq!(f["subtype"], "success");
    assert_eq!(f["is_error"], true);
    assert_eq!(f["api_error_status"], Value::Null);
    assert_eq!(f["result"], "Not logged in · Please run /login");
    assert_eq!(f["total_cost_usd"], 0);
    assert!(
        f["session_id"].as_str().is_some_and(|s| s.len() == 36),
        "{f:?}"
    );
}

#[test]
fn the_standins_answers_have_the_real_clis_keys_and_types() {
    let f = claude_fixture();
    let error = error_shape(&f);
    let json = ["--output-format", "json"];
    let stream = ["--output-format", "stream-json", "--verbose"];
    // What, the prompt, the format, an error subtype, the exit status.
    let cases: [(&str, &str, &[&str], bool, i32); 9] = [
        ("a success", "hello", &json, false, 0),
        ("a success, stream-json", "hello", &stream, false, 0),
        ("a large answer", "BIG", &json, false, 0),
        ("a usage limit", "USAGE_LIMIT", &json, false, 0),
        (
            "a usage limit, stream-json",
            "USAGE_LIMIT",
            &stream,
            false,
            0,
        ),
        ("a limit with a clock time", "HIT_LIMIT", &json, false, 0),
        ("a 401", "AUTH", &json, false, 1),
        ("a 529", "OVERLOADED", &json, false, 1),
        ("error_max_turns", "MAX_TURNS", &json, true, 1),
    ];
    let mut wrong = Vec::new();
    for (what, prompt, format, error_subtype, exit) in cases {
        let shape = if error_subtype { &error } else { &f };
        let (code, object) = result_of(prompt, format, &[]);
        assert_eq!(object["type"], "result", "{what}: {object:?}");
        assert_eq!(code, exit, "{what}: exit status");
        for d in shape_differences(shape, &object) {
            wrong.push(format!("{what}: {d}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "examples/claude differs from Claude Code 2.1.197 ({CLAUDE_FIXTURE}):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_standins_error_subtype_has_its_words_in_errors() {
    let (_, object) = result_of("MAX_TURNS", &["--output-format=json"], &[]);
    assert_eq!(object["subtype"], "error_max_turns");
    assert_eq!(object["is_error"], true);
    // The words of 2.1.197: `Reached maximum number of turns (${maxTurns})`.
    assert_eq!(
        object.get("errors"),
        Some(&serde_json::json!(["Reached maximum number of turns (3)"])),
        "{object:?}"
    );
}

/// Without a login the stand-in answers what the real CLI does, in
/// everything but the ids and the durations.
#[test]
fn the_standins_not_logged_in_answer_is_the_fixtures() {
    let f = claude_fixture();
    let spool = Spool::new();
    let missing = spool.scratch("no-login");
    let login = missing.display().to_string();
    let env = [("STANDIN_LOGIN_FILE", login.as_str())];
    let (code, object) = result_of("work", &["--output-format", "json"], &env);
    assert_eq!(code, 1, "the real CLI exits 1");
    assert_eq!(shape_differences(&f, &object), Vec::<String>::new());
    for key in [
        "type",
        "subtype",
        "is_error",
        "api_error_status",
        "result",
        "num_turns",
        "total_cost_usd",
        "modelUsage",
        "permission_denials",
        "terminal_reason",
    ] {
        assert_eq!(object[key], f[key], "{key}");
    }
}
