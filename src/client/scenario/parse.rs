//! Scenario text to [`Step`]s. Every regex, escape and block is checked
//! here, so a file with a mistake is reported as `FILE:LINE: message`
//! before anything runs.

use std::time::Duration;

use regex::Regex;

use super::text::{decode_bytes, with_placeholders, Mode};
use super::{Located, Pattern, Scenario, Step};

/// A syntax error in a scenario file.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line_no}: {message}")]
pub struct ParseError {
    pub file: String,
    pub line_no: usize,
    pub message: String,
}

/// Parses `10s`, `500ms`, `1.5s`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse::<u64>().ok().map(Duration::from_millis);
    }
    let secs: f64 = s.strip_suffix('s').unwrap_or(s).parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// Splits `[500ms] rest` into the bracketed duration and the rest.
fn bracketed(rest: &str) -> Result<(Option<Duration>, &str), String> {
    let Some(inner) = rest.strip_prefix('[') else {
        return Ok((None, rest));
    };
    let (d, tail) = inner.split_once(']').ok_or("unclosed '[' in timeout")?;
    let d = parse_duration(d).ok_or_else(|| format!("bad duration {d:?}"))?;
    Ok((Some(d), tail))
}

/// A regex as written, checked with every `$NAME` set to a placeholder.
fn pattern(s: &str) -> Result<Pattern, String> {
    let s = s.trim();
    let probe = with_placeholders(s, Mode::Backslashed)?;
    Regex::new(&probe).map_err(|e| format!("bad regex: {e}"))?;
    Ok(Pattern(s.to_string()))
}

const USAGE: &str = "expected 'NAME -> LINE', 'NAME: LINE', 'NAME sends BYTES', \
    'NAME <- REGEX', 'NAME next REGEX', 'NAME !<- REGEX', 'NAME closed', \
    'NAME connects', 'NAME quits' or 'NAME stops reading'";

/// One client step: `NAME` and what it does.
fn client_step(line: &str) -> Result<Step, String> {
    let (who, rest) = line.split_once([' ', ':']).ok_or(USAGE)?;
    if who.is_empty() {
        return Err("missing client name".into());
    }
    let who = who.to_string();
    let send = |text: &str, raw: bool| {
        let text = text.strip_prefix(' ').unwrap_or(text).to_string();
        if raw {
            decode_bytes(&with_placeholders(&text, Mode::Backslashed)?)?;
        } else {
            with_placeholders(&text, Mode::Literal)?;
        }
        Ok(Step::Send {
            who: who.clone(),
            text,
            raw,
        })
    };
    if line.as_bytes()[who.len()] == b':' {
        return send(rest, false);
    }
    let rest = rest.trim_start();
    if let Some(text) = rest.strip_prefix("->") {
        return send(text, false);
    }
    if let Some(bytes) = rest.strip_prefix("sends ") {
        return send(bytes, true);
    }
    if let Some(r) = rest.strip_prefix("!<-") {
        let (d, pat) = bracketed(r)?;
        return Ok(match pat.split_once(" until ") {
            Some((pat, fence)) => Step::Count {
                who,
                count: 0,
                pattern: pattern(pat)?,
                fence: pattern(fence)?,
                timeout: d,
            },
            None => Step::Refuse {
                who,
                pattern: pattern(pat)?,
                quiet: d,
            },
        });
    }
    if let Some(r) = rest.strip_prefix("<-") {
        let (timeout, pat) = bracketed(r)?;
        let Some(counted) = pat.trim_start().strip_prefix("exactly ") else {
            return Ok(Step::Expect {
                who,
                pattern: pattern(pat)?,
                timeout,
            });
        };
        let (n, pat) = counted
            .split_once(' ')
            .ok_or("expected 'exactly N REGEX until FENCE'")?;
        let count = n.parse().map_err(|_| format!("{n:?} is not a count"))?;
        let (pat, fence) = pat
            .split_once(" until ")
            .ok_or("'exactly N REGEX' needs 'until FENCE': the line that ends the count")?;
        return Ok(Step::Count {
            who,
            count,
            pattern: pattern(pat)?,
            fence: pattern(fence)?,
            timeout,
        });
    }
    if let Some(r) = rest.strip_prefix("next") {
        if r.starts_with([' ', '[']) {
            let (timeout, pat) = bracketed(r)?;
            return Ok(Step::Next {
                who,
                pattern: pattern(pat)?,
                timeout,
            });
        }
    }
    if let Some(r) = rest.strip_prefix("closed") {
        let (timeout, r) = bracketed(r)?;
        let last = match r.trim() {
            "" => None,
            r => Some(pattern(
                r.strip_prefix("with ")
                    .ok_or("expected 'closed with REGEX'")?,
            )?),
        };
        return Ok(Step::Closed { who, last, timeout });
    }
    match rest.trim() {
        "connects" => Ok(Step::Connect { who }),
        "quits" => Ok(Step::Quit { who }),
        "stops reading" => Ok(Step::StopReading { who }),
        other => Err(format!("unknown action {other:?}; {USAGE}")),
    }
}

/// An open `parallel` or `repeat` block.
struct Block {
    line_no: usize,
    text: String,
    repeat: Option<usize>,
    body: Vec<Located>,
}

/// Only client steps (and repeats of them) may run in parallel: each
/// client's steps run in order, the clients at the same time.
fn check_parallel(body: &[Located]) -> Result<(), (usize, String)> {
    for s in body {
        match &s.step {
            Step::Repeat(_, inner) => check_parallel(inner)?,
            Step::Refuse { .. } => {
                return Err((
                    s.line_no,
                    "use '!<- REGEX until FENCE' in a parallel block".into(),
                ))
            }
            step if step.who().is_some() => {}
            _ => {
                return Err((
                    s.line_no,
                    "only client steps can run in a parallel block".into(),
                ))
            }
        }
    }
    Ok(())
}

impl Scenario {
    /// Parses scenario text; `name` is used in messages (usually the path).
    pub fn parse(name: &str, text: &str) -> Result<Scenario, ParseError> {
        let err = |line_no, message| ParseError {
            file: name.to_string(),
            line_no,
            message,
        };
        let mut imd_args = Vec::new();
        let mut top = Vec::new();
        let mut open: Vec<Block> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let trimmed = raw.trim_end_matches('\r').trim_start();
            if let Some(args) = trimmed.strip_prefix("# imd:") {
                imd_args.extend(args.split_whitespace().map(String::from));
                continue;
            }
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let mut at = (line_no, trimmed.to_string());
            let step = if let Some(n) = trimmed.strip_prefix("repeat ") {
                let n = n
                    .trim()
                    .parse()
                    .map_err(|_| err(line_no, format!("{n:?} is not a count")))?;
                open.push(Block {
                    line_no,
                    text: trimmed.to_string(),
                    repeat: Some(n),
                    body: Vec::new(),
                });
                continue;
            } else if trimmed == "parallel" {
                if open.iter().any(|b| b.repeat.is_none()) {
                    return Err(err(line_no, "a parallel block inside another".into()));
                }
                open.push(Block {
                    line_no,
                    text: trimmed.to_string(),
                    repeat: None,
                    body: Vec::new(),
                });
                continue;
            } else if trimmed == "end" {
                let b = open
                    .pop()
                    .ok_or_else(|| err(line_no, "'end' without 'parallel' or 'repeat'".into()))?;
                at = (b.line_no, b.text);
                match b.repeat {
                    Some(n) => Step::Repeat(n, b.body),
                    None => {
                        check_parallel(&b.body).map_err(|(l, m)| err(l, m))?;
                        Step::Parallel(b.body)
                    }
                }
            } else if trimmed == "server shuts down" {
                Step::Shutdown
            } else if let Some(d) = trimmed.strip_prefix("timeout ") {
                Step::Timeout(
                    parse_duration(d).ok_or_else(|| err(line_no, format!("bad duration {d:?}")))?,
                )
            } else if let Some(inner) = trimmed.strip_prefix("needs ") {
                let inner = inner.trim_start();
                Step::Needs(Box::new(Located {
                    line_no,
                    text: inner.to_string(),
                    step: client_step(inner).map_err(|m| err(line_no, m))?,
                }))
            } else {
                client_step(trimmed).map_err(|m| err(line_no, m))?
            };
            let located = Located {
                line_no: at.0,
                text: at.1,
                step,
            };
            match open.last_mut() {
                Some(b) => b.body.push(located),
                None => top.push(located),
            }
        }
        if let Some(b) = open.pop() {
            return Err(err(b.line_no, format!("'{}' has no 'end'", b.text)));
        }
        Ok(Scenario {
            name: name.to_string(),
            imd_args,
            steps: top,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Step {
        let s = Scenario::parse("t", text).unwrap_or_else(|e| panic!("{e}"));
        s.steps.into_iter().next().expect("a step").step
    }

    #[test]
    fn parses_every_kind_of_step() {
        let s = Scenario::parse(
            "t",
            "# c\n\ntimeout 2s\nalice -> hello | x\nalice: rename|alice\nbob <- alice.*hello\nbob <-[500ms] ^ok\ncarol !<- secret\ncarol !<-[1s] x\ndave connects\nalice quits\n",
        )
        .unwrap();
        assert_eq!(s.steps.len(), 9);
        assert!(
            matches!(&s.steps[1].step, Step::Send { who, text, raw: false } if who == "alice" && text == "hello | x")
        );
        assert!(matches!(&s.steps[2].step, Step::Send { text, .. } if text == "rename|alice"));
        assert!(
            matches!(&s.steps[4].step, Step::Expect { timeout: Some(d), .. } if *d == Duration::from_millis(500))
        );
        assert!(
            matches!(&s.steps[6].step, Step::Refuse { quiet: Some(d), .. } if *d == Duration::from_secs(1))
        );
    }

    #[test]
    fn parses_the_v2_steps() {
        assert!(matches!(
            one(r"a sends x\r\n{3*y}"),
            Step::Send { raw: true, .. }
        ));
        assert!(matches!(
            one("a next[1s] ^ok$"),
            Step::Next {
                timeout: Some(_),
                ..
            }
        ));
        assert!(
            matches!(one("a <- exactly 2 ^who  until ^ok who"), Step::Count { count: 2, pattern, fence, .. } if pattern.0 == "^who" && fence.0 == "^ok who")
        );
        assert!(matches!(
            one("a !<- psst until ^<b> x$"),
            Step::Count { count: 0, .. }
        ));
        assert!(matches!(one("a closed"), Step::Closed { last: None, .. }));
        assert!(matches!(
            one(r"a closed[2s] with ^\*\*\* bye"),
            Step::Closed {
                last: Some(_),
                timeout: Some(_),
                ..
            }
        ));
        assert!(matches!(one("a stops reading"), Step::StopReading { .. }));
        assert!(matches!(one("server shuts down"), Step::Shutdown));
        assert!(matches!(one("needs a <-[1s] ^x"), Step::Needs(_)));
        assert!(matches!(one("a: to|$b|hi"), Step::Send { .. }));
        assert!(matches!(one(r"a <- ^<$b> (?<n>\d+)$"), Step::Expect { .. }));
        match one("parallel\na: x\nrepeat 2\nb: y$i\nend\nend\n") {
            Step::Parallel(body) => assert!(matches!(body[1].step, Step::Repeat(2, _))),
            other => panic!("{other:?}"),
        }
        let s =
            Scenario::parse("t", "# imd: --max-line 64\n# imd: --idle-timeout 1\na: x\n").unwrap();
        assert_eq!(s.imd_args, ["--max-line", "64", "--idle-timeout", "1"]);
    }

    #[test]
    fn reports_bad_lines_with_their_number() {
        let e = Scenario::parse("f.chat", "alice -> hi\nbob <- (\n").unwrap_err();
        assert_eq!(e.line_no, 2);
        assert!(e.to_string().starts_with("f.chat:2: bad regex"));
        for bad in [
            "alice dances",
            "timeout soon",
            r"a sends \q",
            "a sends {2*x",
            "a <- exactly 2 x",
            "a <- exactly two x until y",
            "a closed after x",
            "repeat 2\na: x\n",
            "end",
            "parallel\ntimeout 1s\nend",
            "parallel\na !<- x\nend",
            "parallel\nparallel\nend\nend",
            "needs timeout 1s",
        ] {
            assert!(Scenario::parse("f", bad).is_err(), "{bad}");
        }
        let e = Scenario::parse("f", "a: x\nrepeat 2\na: y\n").unwrap_err();
        assert_eq!(e.line_no, 2, "{e}");
    }
}
