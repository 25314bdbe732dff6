//! The agent: the command a worker runs for each task, and the argv it
//! builds for one (hw-worker(8), Running the command). `CLAUDE_COMMAND`
//! is split into words like a shell splits them. A word `{}` makes it a
//! generic command: the description takes that word's place and nothing
//! is added. Otherwise it is the Claude CLI in headless mode: the
//! command's words, `--system-prompt-file FILE`, `--output-format json`
//! (unless the words name a format), the task's options, `-p`, `--` and
//! the description, which is one argument whatever it holds; a
//! description too long for one argument goes to the agent's stdin.
//! `claude` reads what the CLI answers; `run` runs one attempt.

pub mod claude;
pub mod reaper;
pub mod run;

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};

use crate::model::agent_options::AgentOptions;

/// Linux's MAX_ARG_STRLEN: the longest single argument, with its NUL.
/// A longer description goes to the Claude CLI's stdin.
pub const MAX_ARGUMENT: usize = 131_072;

/// A command line split into words like a shell splits them (single and
/// double quotes, backslash), without any other shell meaning: `sh -c
/// "…"` is how a user asks for a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    words: Vec<String>,
}

impl CommandLine {
    /// `None` when it has no words or an open quote.
    pub fn parse(line: &str) -> Option<CommandLine> {
        let words = split_words(line)?;
        (!words.is_empty()).then_some(CommandLine { words })
    }

    pub fn words(&self) -> &[String] {
        &self.words
    }
}

/// What the Claude CLI prints, as the command's words choose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// `--output-format json`, which the worker adds when the words name
    /// no format: one result object.
    Json,
    /// `--output-format stream-json --verbose`: one object per line.
    StreamJson,
    /// `--output-format text`: the answer alone.
    Text,
}

/// The command run for each task.
#[derive(Debug, Clone)]
pub struct AgentCommand {
    words: Vec<String>,
    system_prompt_file: Option<PathBuf>,
    /// `None`: a generic command (a word is `{}`).
    claude: Option<OutputFormat>,
    /// Whether the words name the format (else the worker adds `json`).
    names_format: bool,
}

/// What one task's attempt runs: its argv, and what its stdin holds
/// (`/dev/null` when nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub argv: Vec<String>,
    pub stdin: Option<String>,
}

impl AgentCommand {
    /// The command of `CLAUDE_COMMAND`'s words; `Err` says why they cannot
    /// be run as the Claude CLI.
    pub fn new(
        line: CommandLine,
        system_prompt_file: Option<PathBuf>,
    ) -> Result<AgentCommand, String> {
        let words = line.words;
        if words.iter().any(|w| w == "{}") {
            return Ok(AgentCommand {
                words,
                system_prompt_file,
                claude: None,
                names_format: false,
            });
        }
        let named = output_format(&words);
        let format = match named.as_deref() {
            None | Some("json") => OutputFormat::Json,
            Some("stream-json") => OutputFormat::StreamJson,
            Some("text") => OutputFormat::Text,
            Some(other) => {
                return Err(format!(
                    "--output-format {other:?} is not text, json or stream-json"
                ))
            }
        };
        if format == OutputFormat::StreamJson && !words.iter().any(|w| w == "--verbose") {
            return Err(
                "--output-format stream-json needs --verbose with -p (the CLI refuses it)".into(),
            );
        }
        Ok(AgentCommand {
            words,
            system_prompt_file,
            claude: Some(format),
            names_format: named.is_some(),
        })
    }

    /// The command as the start-up line shows it: its words (quoted where
    /// needed) and what the worker adds.
    pub fn describe(&self) -> String {
        let quote = |w: &String| match w.is_empty()
            || w.contains(|c: char| c.is_whitespace() || "'\"\\".contains(c))
        {
            true => format!("'{}'", w.replace('\'', "'\\''")),
            false => w.clone(),
        };
        let words: Vec<String> = self.words.iter().map(quote).collect();
        let added = match self.claude {
            None => "the description in place of {}",
            Some(_) if self.names_format => "-p -- DESCRIPTION",
            Some(_) => "--output-format json -p -- DESCRIPTION",
        };
        format!("{} (+ {added})", words.join(" "))
    }

    /// The program, the first word.
    pub fn program(&self) -> &str {
        &self.words[0]
    }

    /// Runs `program` for the first word (a path found at start-up).
    pub fn set_program(&mut self, program: &Path) {
        self.words[0] = program.display().to_string();
    }

    pub fn system_prompt_file(&self) -> Option<&Path> {
        self.system_prompt_file.as_deref()
    }

    pub fn set_system_prompt_file(&mut self, file: PathBuf) {
        self.system_prompt_file = Some(file);
    }

    /// The Claude CLI's output format; `None` for a generic command.
    pub fn claude(&self) -> Option<OutputFormat> {
        self.claude
    }

    /// Why this command cannot run `description`, if it cannot: a generic
    /// command passes it as one argument, which the kernel caps.
    pub fn refuses(&self, description: &str) -> Option<String> {
        (self.claude.is_none() && description.len() >= MAX_ARGUMENT).then(|| {
            format!(
                "description is longer than one argument may be ({MAX_ARGUMENT} bytes) \
                 for a command with {{}}"
            )
        })
    }

    /// What one task runs: for a generic command, `{}` replaced by the
    /// description; for the Claude CLI, the words, the system prompt,
    /// the output format, the task's options, `-p`, `--` and the
    /// description, or `-p` alone and the description on stdin when it
    /// is too long for one argument.
    pub fn prompt(&self, description: &str, options: &AgentOptions) -> Prompt {
        if self.claude.is_none() {
            let fill = |w: &String| match w.as_str() {
                "{}" => description.to_string(),
                _ => w.clone(),
            };
            return Prompt {
                argv: self.words.iter().map(fill).collect(),
                stdin: None,
            };
        }
        let mut argv = self.words.clone();
        if let Some(file) = &self.system_prompt_file {
            argv.push("--system-prompt-file".into());
            argv.push(file.display().to_string());
        }
        if !self.names_format {
            argv.extend(["--output-format".to_string(), "json".to_string()]);
        }
        argv.extend(options.flags());
        argv.push("-p".into());
        if description.len() >= MAX_ARGUMENT {
            return Prompt {
                argv,
                stdin: Some(description.to_string()),
            };
        }
        argv.extend(["--".to_string(), description.to_string()]);
        Prompt { argv, stdin: None }
    }
}

/// The format the words name: `--output-format X` or `--output-format=X`.
fn output_format(words: &[String]) -> Option<String> {
    let mut it = words.iter();
    while let Some(w) = it.next() {
        if w == "--output-format" {
            return Some(it.next().cloned().unwrap_or_default());
        }
        if let Some(f) = w.strip_prefix("--output-format=") {
            return Some(f.to_string());
        }
    }
    None
}

/// A stdin that holds `text`: an anonymous file in memory, read from its
/// start, so the agent reads at its own pace and no pipe can fill.
pub fn stdin_holding(text: &str) -> io::Result<File> {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let name = CString::new("hookwatch-prompt").expect("no NUL");
    let mut file = File::from(memfd_create(&name, MemFdCreateFlag::MFD_CLOEXEC)?);
    file.write_all(text.as_bytes())?;
    file.rewind()?;
    Ok(file)
}

/// Shell-like word splitting: whitespace separates words; '…' keeps
/// everything; "…" keeps everything but `\"`, `\\`, `\$` and `` \` ``
/// escapes; a backslash outside quotes keeps the next character.
fn split_words(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => w.push(c),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => w.push(c),
                            c => {
                                w.push('\\');
                                w.push(c);
                            }
                        },
                        c => w.push(c),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).push(chars.next()?),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(line: &str) -> AgentCommand {
        AgentCommand::new(CommandLine::parse(line).unwrap(), None).unwrap()
    }

    #[test]
    fn claude_argv_ends_with_p_dashdash_and_the_description() {
        let mut c = command("claude --permission-mode acceptEdits");
        c.set_system_prompt_file(PathBuf::from("/s.txt"));
        let p = c.prompt("- fix the login bug", &AgentOptions::default());
        assert_eq!(
            p.argv,
            [
                "claude",
                "--permission-mode",
                "acceptEdits",
                "--system-prompt-file",
                "/s.txt",
                "--output-format",
                "json",
                "-p",
                "--",
                "- fix the login bug"
            ]
        );
        assert_eq!(p.stdin, None);
    }

    #[test]
    fn a_named_format_is_kept_and_not_added() {
        let c = command("claude --output-format=text");
        let p = c.prompt("d", &AgentOptions::default());
        assert_eq!(p.argv, ["claude", "--output-format=text", "-p", "--", "d"]);
        assert_eq!(c.claude(), Some(OutputFormat::Text));
        let c = command("claude --verbose --output-format stream-json");
        assert_eq!(c.claude(), Some(OutputFormat::StreamJson));
        assert!(AgentCommand::new(
            CommandLine::parse("claude --output-format stream-json").unwrap(),
            None
        )
        .is_err());
        assert!(AgentCommand::new(
            CommandLine::parse("claude --output-format yaml").unwrap(),
            None
        )
        .is_err());
    }

    #[test]
    fn a_long_description_goes_to_stdin() {
        let long = "x".repeat(MAX_ARGUMENT);
        let p = command("claude").prompt(&long, &AgentOptions::default());
        assert_eq!(p.argv, ["claude", "--output-format", "json", "-p"]);
        assert_eq!(p.stdin.as_deref(), Some(long.as_str()));
    }

    #[test]
    fn a_placeholder_makes_a_generic_command() {
        let c = command("echo {} end");
        let p = c.prompt("a; b", &AgentOptions::default());
        assert_eq!(p.argv, ["echo", "a; b", "end"]);
        assert!(c.refuses(&"x".repeat(MAX_ARGUMENT)).is_some());
        assert!(command("claude")
            .refuses(&"x".repeat(MAX_ARGUMENT))
            .is_none());
    }

    #[test]
    fn quoted_words_split_like_a_shell() {
        let w = |s| split_words(s).unwrap();
        assert_eq!(w(r#"sh -c "cat >> f""#), ["sh", "-c", "cat >> f"]);
        assert_eq!(w("a 'b c' d\\ e"), ["a", "b c", "d e"]);
        assert_eq!(w(r#""a \"q\" \n""#), [r#"a "q" \n"#]);
        assert_eq!(w("''"), [""]);
        assert!(split_words("'open").is_none());
        assert!(CommandLine::parse("  ").is_none());
    }

    #[test]
    fn stdin_holds_the_text_from_its_start() {
        use std::io::Read;
        let mut f = stdin_holding("prompt").unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "prompt");
    }
}
