//! The agent: the command a worker runs for each task (`CLAUDE_COMMAND`,
//! split into words like a shell splits them) and the argv it builds for
//! one task (`argv`); `run` runs one attempt of it and supervises the
//! child.

pub mod run;

use std::path::PathBuf;

/// The agent command: `CLAUDE_COMMAND` split on whitespace.
#[derive(Debug, Clone)]
pub struct AgentCommand {
    words: Vec<String>,
    system_prompt_file: Option<PathBuf>,
}

impl AgentCommand {
    /// `None` when the command has no words.
    pub fn parse(command: &str, system_prompt_file: Option<PathBuf>) -> Option<AgentCommand> {
        let words: Vec<String> = command.split_whitespace().map(String::from).collect();
        (!words.is_empty()).then_some(AgentCommand {
            words,
            system_prompt_file,
        })
    }

    /// A command line split like a shell splits words (single and double
    /// quotes, backslash), without any other shell meaning: `sh -c "…"`
    /// is how a user asks for a shell. `None` when it has no words or an
    /// open quote.
    pub fn parse_quoted(command: &str) -> Option<AgentCommand> {
        let words = split_words(command)?;
        (!words.is_empty()).then_some(AgentCommand {
            words,
            system_prompt_file: None,
        })
    }

    /// The command's own words, as given (for hooks, which get no prompt).
    pub fn words(&self) -> Vec<String> {
        self.words.clone()
    }

    /// The argv for one task: `{}` replaced by the description (xargs
    /// style, nothing appended), else the system prompt option and
    /// `-p DESCRIPTION` appended. The description is always one element.
    pub fn argv(&self, description: &str) -> Vec<String> {
        if self.words.iter().any(|w| w == "{}") {
            let fill = |w: &String| {
                if w == "{}" {
                    description.to_string()
                } else {
                    w.clone()
                }
            };
            return self.words.iter().map(fill).collect();
        }
        let mut argv = self.words.clone();
        if let Some(file) = &self.system_prompt_file {
            argv.push("--system-prompt-file".into());
            argv.push(file.display().to_string());
        }
        argv.push("-p".into());
        argv.push(description.into());
        argv
    }
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

    #[test]
    fn argv_appends_prompt_or_fills_placeholder() {
        let c = AgentCommand::parse("claude --x", Some("s.txt".into())).unwrap();
        assert_eq!(
            c.argv("a b"),
            [
                "claude",
                "--x",
                "--system-prompt-file",
                "s.txt",
                "-p",
                "a b"
            ]
        );
        let c = AgentCommand::parse("echo {} end", Some("s.txt".into())).unwrap();
        assert_eq!(c.argv("a; b"), ["echo", "a; b", "end"]);
        assert!(AgentCommand::parse("  ", None).is_none());
    }

    #[test]
    fn quoted_words_split_like_a_shell() {
        let w = |s| split_words(s).unwrap();
        assert_eq!(w(r#"sh -c "cat >> f""#), ["sh", "-c", "cat >> f"]);
        assert_eq!(w("a 'b c' d\\ e"), ["a", "b c", "d e"]);
        assert_eq!(w(r#""a \"q\" \n""#), [r#"a "q" \n"#]);
        assert_eq!(w("''"), [""]);
        assert!(split_words("'open").is_none());
    }
}
