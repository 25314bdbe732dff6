//! A task's options for the Claude CLI (hookwatch(5), Task): `model`,
//! `max_turns`, `max_budget_usd`, `allowed_tools`,
//! `append_system_prompt`, `resume` and `workdir`, each checked here so
//! that hw-enqueue refuses what the worker would dead-letter. Nothing that
//! could read as an option of the CLI gets through: no value starts with
//! `-`, and a `workdir` is a plain relative path.

use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

/// The options a task may give; all optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentOptions {
    pub model: Option<String>,
    pub max_turns: Option<u64>,
    pub max_budget_usd: Option<f64>,
    pub allowed_tools: Vec<String>,
    pub append_system_prompt: Option<String>,
    pub resume: Option<String>,
    /// Below the worker's `--workdir`; checked on disk by the worker.
    pub workdir: Option<PathBuf>,
}

impl AgentOptions {
    /// The options of a task's fields; `Err` names the bad one.
    pub fn parse(fields: &Map<String, Value>) -> Result<AgentOptions, String> {
        let text = |key: &str| -> Result<Option<&str>, String> {
            match fields.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(format!("{key} is not a string")),
            }
        };
        let model = match text("model")? {
            Some(m) if !valid_model(m) => {
                return Err(
                    "model is not 1-128 letters, digits and ._:@/[]- (not starting with -)".into(),
                )
            }
            m => m.map(String::from),
        };
        let max_turns = match fields.get("max_turns") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|n| (1..=1_000_000).contains(n))
                    .ok_or("max_turns is not a positive whole number")?,
            ),
        };
        let max_budget_usd = match fields.get("max_budget_usd") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_f64()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or("max_budget_usd is not a positive number")?,
            ),
        };
        let allowed_tools = match fields.get("allowed_tools") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(tools)) => tools
                .iter()
                .map(|t| match t {
                    Value::String(s) if !s.is_empty() && !s.starts_with('-') => Ok(s.clone()),
                    _ => Err("allowed_tools holds something that is not a tool name"),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("allowed_tools is not a list".into()),
        };
        let append_system_prompt = text("append_system_prompt")?.map(String::from);
        let resume = match text("resume")? {
            Some(r) if r.is_empty() || r.chars().count() > 256 || r.starts_with('-') => {
                return Err(
                    "resume is not a session id or title (1-256 characters, not starting with -)"
                        .into(),
                )
            }
            r => r.map(String::from),
        };
        let workdir = match text("workdir")? {
            Some(w) => Some(relative_workdir(w)?),
            None => None,
        };
        Ok(AgentOptions {
            model,
            max_turns,
            max_budget_usd,
            allowed_tools,
            append_system_prompt,
            resume,
            workdir,
        })
    }

    /// The Claude CLI's flags for these options, in a fixed order; each
    /// value joined to its flag (`--model=…`) so that none can be read as
    /// an option of its own, but the tools, which follow
    /// `--allowedTools` as words of their own.
    pub fn flags(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(m) = &self.model {
            out.push(format!("--model={m}"));
        }
        if let Some(n) = self.max_turns {
            out.push(format!("--max-turns={n}"));
        }
        if let Some(x) = self.max_budget_usd {
            out.push(format!("--max-budget-usd={x}"));
        }
        if let Some(p) = &self.append_system_prompt {
            out.push(format!("--append-system-prompt={p}"));
        }
        if let Some(r) = &self.resume {
            out.push(format!("--resume={r}"));
        }
        if !self.allowed_tools.is_empty() {
            out.push("--allowedTools".into());
            out.extend(self.allowed_tools.iter().cloned());
        }
        out
    }
}

/// `sonnet`, `claude-sonnet-4-5[1m]`,
/// `us.anthropic.claude-3-7-sonnet-20250219-v1:0`.
fn valid_model(m: &str) -> bool {
    (1..=128).contains(&m.len())
        && !m.starts_with('-')
        && m.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._:@/[]-".contains(&c))
}

/// A relative path of plain names: no `..`, no `.`-only, not absolute.
fn relative_workdir(w: &str) -> Result<PathBuf, String> {
    let bad = || format!("workdir {w:?} is not a relative path below the worker's --workdir");
    let path = Path::new(w);
    if w.is_empty() || w.contains('\0') || w.len() > 4096 || path.is_absolute() {
        return Err(bad());
    }
    let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain || path.components().next().is_none() {
        return Err(bad());
    }
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<AgentOptions, String> {
        AgentOptions::parse(v.as_object().unwrap())
    }

    #[test]
    fn good_options_become_flags_joined_to_their_values() {
        let o = parse(json!({"model": "claude-sonnet-4-5[1m]", "max_turns": 3,
            "max_budget_usd": 0.5, "allowed_tools": ["Read", "Bash(git log:*)"],
            "append_system_prompt": "-be terse", "resume": "a-session", "workdir": "repo/sub"}))
        .unwrap();
        assert_eq!(
            o.flags(),
            [
                "--model=claude-sonnet-4-5[1m]",
                "--max-turns=3",
                "--max-budget-usd=0.5",
                "--append-system-prompt=-be terse",
                "--resume=a-session",
                "--allowedTools",
                "Read",
                "Bash(git log:*)"
            ]
        );
        assert_eq!(o.workdir, Some(PathBuf::from("repo/sub")));
        assert!(parse(json!({})).unwrap().flags().is_empty());
    }

    #[test]
    fn bad_options_name_themselves() {
        for (v, key) in [
            (json!({"model": "-x"}), "model"),
            (json!({"model": "a b"}), "model"),
            (json!({"model": ""}), "model"),
            (json!({"max_turns": 0}), "max_turns"),
            (json!({"max_turns": 1.5}), "max_turns"),
            (json!({"max_budget_usd": -1}), "max_budget_usd"),
            (json!({"max_budget_usd": "1"}), "max_budget_usd"),
            (json!({"allowed_tools": "Read"}), "allowed_tools"),
            (
                json!({"allowed_tools": ["--dangerously-skip-permissions"]}),
                "allowed_tools",
            ),
            (json!({"allowed_tools": [""]}), "allowed_tools"),
            (json!({"append_system_prompt": 3}), "append_system_prompt"),
            (json!({"resume": "--x"}), "resume"),
            (json!({"resume": "r".repeat(257)}), "resume"),
            (json!({"workdir": "../etc"}), "workdir"),
            (json!({"workdir": "/etc"}), "workdir"),
            (json!({"workdir": "a/../../b"}), "workdir"),
            (json!({"workdir": "."}), "workdir"),
            (json!({"workdir": ""}), "workdir"),
        ] {
            let e = parse(v.clone()).unwrap_err();
            assert!(e.starts_with(key), "{v}: {e}");
        }
    }
}
