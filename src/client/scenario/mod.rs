//! Chat scenarios as plain text, and the runner behind `imc scenario`.
//!
//! A scenario is a file where each line is one client acting or expecting,
//! run top to bottom against a server given by address. It only uses raw
//! protocol bytes and regular expressions over what clients receive, so the
//! same file runs against imd or any other server speaking PROTOCOL.md's
//! commands, and shows exactly where they differ (tests/README.md has what
//! the original tutorial server gives).
//! tests/README.md documents every construct with an example; in short:
//!
//! ```text
//! # imd: --max-line 64              flags for the imd the runner starts for this file
//! timeout 2s                        default wait for later expectations
//! alice -> hello all                send a line (literal text, "\n" added); also `alice: ...`
//! alice sends a\x1b[2Jb\r\n         send exact bytes: escapes, {4097*x}, no "\n" added
//! bob <- alice.*hello               skip lines until one matches (named groups are captured)
//! bob next ^ok who: 2 online$       the very next line must match
//! bob <- exactly 2 ^who  until ^ok  exactly 2 matching lines before the fence line
//! carol !<- psst until ^<alice> end no match before the fence line
//! carol !<-[100ms] psst             no match until the file ends (after a quiet wait)
//! bob closed with ^\*\*\* bye:      the server closes bob; its last line matches
//! bob stops reading                 bob never reads again (too-slow tests)
//! dave connects / alice quits       open / close a connection
//! alice: to|$bob|hi                 $bob: bob's address name; $NAME: a captured group
//! parallel ... end                  each client's steps run at the same time as the others'
//! repeat 3 ... end                  the steps 3 times, $i = 1, 2, 3
//! server shuts down                 the runner stops the server it started (SIGTERM)
//! needs alice <-[1s] ^\*\*\* welc   if this step fails the file is skipped, not failed
//! ```
//!
//! # Layout
//!
//! - this file: the parsed form ([`Scenario`], [`Step`]) and what a run
//!   reports ([`Outcome`]);
//! - `parse`: text to steps, with every regex and escape checked up front;
//! - `text`: `$NAME` substitution and the byte escapes of `sends`;
//! - `peer`: one client connection and its waits on received lines;
//! - `run`: the runner, `parallel` and `repeat`, skips and transcripts.

mod parse;
mod peer;
mod run;
mod text;

use std::time::Duration;

pub use parse::{parse_duration, ParseError};
pub use run::{run, run_on, Target};

/// A regex as written, before `$NAME` substitution (checked when parsed).
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern(pub String);

/// One step of a scenario.
#[derive(Debug, Clone)]
pub enum Step {
    /// `timeout DURATION`.
    Timeout(Duration),
    /// `NAME -> LINE`, `NAME: LINE` (`raw: false`, "\n" added) or
    /// `NAME sends BYTES` (`raw: true`: escapes decoded, nothing added).
    Send {
        who: String,
        text: String,
        raw: bool,
    },
    /// `NAME <- REGEX`: skip to the first matching line.
    Expect {
        who: String,
        pattern: Pattern,
        timeout: Option<Duration>,
    },
    /// `NAME next REGEX`: the very next line matches.
    Next {
        who: String,
        pattern: Pattern,
        timeout: Option<Duration>,
    },
    /// `NAME <- exactly N REGEX until FENCE`, or `NAME !<- REGEX until
    /// FENCE` (`count: 0`): the lines before the fence line.
    Count {
        who: String,
        count: usize,
        pattern: Pattern,
        fence: Pattern,
        timeout: Option<Duration>,
    },
    /// `NAME !<- REGEX` without a fence: from now to the end of the file.
    Refuse {
        who: String,
        pattern: Pattern,
        quiet: Option<Duration>,
    },
    /// `NAME closed [with REGEX]`: the server closes the connection.
    Closed {
        who: String,
        last: Option<Pattern>,
        timeout: Option<Duration>,
    },
    /// `NAME connects`.
    Connect { who: String },
    /// `NAME quits`.
    Quit { who: String },
    /// `NAME stops reading`.
    StopReading { who: String },
    /// `server shuts down`.
    Shutdown,
    /// `needs STEP`: a client step that must pass or the file is skipped.
    Needs(Box<Located>),
    /// `parallel` ... `end`.
    Parallel(Vec<Located>),
    /// `repeat N` ... `end`.
    Repeat(usize, Vec<Located>),
}

impl Step {
    /// The client a step acts for, if it is a client step.
    pub fn who(&self) -> Option<&str> {
        match self {
            Step::Send { who, .. }
            | Step::Expect { who, .. }
            | Step::Next { who, .. }
            | Step::Count { who, .. }
            | Step::Refuse { who, .. }
            | Step::Closed { who, .. }
            | Step::Connect { who }
            | Step::Quit { who }
            | Step::StopReading { who } => Some(who),
            _ => None,
        }
    }
}

/// A step with where it came from.
#[derive(Debug, Clone)]
pub struct Located {
    pub line_no: usize,
    pub text: String,
    pub step: Step,
}

/// A parsed scenario file.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    /// Flags from `# imd: ...` lines, for the imd the runner starts; a file
    /// with any is skipped against a server the runner did not start.
    pub imd_args: Vec<String>,
    pub steps: Vec<Located>,
}

impl Scenario {
    /// Every step, blocks included, depth first.
    pub fn all_steps(&self) -> Vec<&Located> {
        fn walk<'a>(steps: &'a [Located], out: &mut Vec<&'a Located>) {
            for s in steps {
                out.push(s);
                match &s.step {
                    Step::Parallel(body) | Step::Repeat(_, body) => walk(body, out),
                    Step::Needs(inner) => out.push(inner),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.steps, &mut out);
        out
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Outcome {
    /// `None` if every step passed (or the file was skipped); otherwise the
    /// failure, with its step.
    pub failure: Option<String>,
    /// `Some(why)` when the file does not apply to this server: it needs
    /// imd flags or a shutdown the runner cannot give, or a `needs` step
    /// failed.
    pub skipped: Option<String>,
    /// Every client's traffic, with timestamps, in time order.
    pub transcript: String,
}

impl Outcome {
    /// True when every step passed (a skipped file did not pass).
    pub fn passed(&self) -> bool {
        self.failure.is_none() && self.skipped.is_none()
    }
}
