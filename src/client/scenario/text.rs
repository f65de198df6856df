//! `$NAME` substitution, and the byte escapes of `NAME sends BYTES`.
//!
//! ```text
//! $NAME  ${NAME}   the value of NAME: a captured group, $i in a repeat, or a
//!                  client's address name (its local IP:PORT)
//! $$               a literal "$"; in regexes and `sends`, "\$" works too
//! \n \r \t \0 \\   newline, carriage return, tab, NUL, backslash (sends only)
//! \xHH             the byte 0xHH, e.g. \x1b (ESC), \xff (invalid UTF-8)
//! \$ \{ \}         a literal "$", "{", "}"
//! {N*TEXT}         TEXT (escapes allowed) repeated N times: {4097*x}
//! ```

use std::collections::HashMap;

/// Variables in force: captures, `$i`, clients' address names.
pub type Vars = HashMap<String, String>;

/// How text around a `$NAME` is read.
#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    /// `->` lines: everything but `$` is literal.
    Literal,
    /// Regexes and `sends`: a backslash keeps the next character as it is
    /// (so `\$` is not a variable).
    Backslashed,
}

/// Replaces `$NAME` and `${NAME}` with `quote(value)`; `$$` is `$`. A `$`
/// followed by anything else (a regex's end anchor) is kept.
pub fn substitute(
    s: &str,
    vars: &Vars,
    mode: Mode,
    quote: &dyn Fn(&str) -> String,
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' if mode == Mode::Backslashed => {
                out.push(c);
                if let Some((_, next)) = chars.next() {
                    out.push(next);
                }
            }
            '$' => {
                let rest = &s[at + 1..];
                if rest.starts_with('$') {
                    chars.next();
                    out.push('$');
                    continue;
                }
                let (name, used) = if let Some(r) = rest.strip_prefix('{') {
                    let end = r.find('}').ok_or("unclosed '${'")?;
                    (&r[..end], end + 2)
                } else {
                    let end = rest
                        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    (&rest[..end], end)
                };
                if name.is_empty() || !name.starts_with(|c: char| c.is_alphabetic() || c == '_') {
                    out.push('$');
                    continue;
                }
                let value = vars.get(name).ok_or_else(|| {
                    format!(
                        "${name} is not set (no captured group or connected client of that name)"
                    )
                })?;
                out.push_str(&quote(value));
                for _ in 0..used {
                    chars.next();
                }
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// Every `$NAME` in `s` set to a placeholder, so text can be checked when
/// parsed, before any value is known.
pub fn with_placeholders(s: &str, mode: Mode) -> Result<String, String> {
    let mut known = Vars::new();
    // Names are learnt from the errors, one at a time (few per line).
    for _ in 0..64 {
        match substitute(s, &known, mode, &|_| "x".into()) {
            Ok(done) => return Ok(done),
            Err(e) => match e.strip_prefix('$').and_then(|r| r.split_once(' ')) {
                Some((name, _)) => {
                    known.insert(name.to_string(), String::new());
                }
                None => return Err(e),
            },
        }
    }
    Err("too many variables on one line".into())
}

/// Decodes the escapes and `{N*TEXT}` repeats of a `sends` step.
pub fn decode_bytes(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let rest = decode_into(s, &mut out, false)?;
    debug_assert!(rest.is_empty());
    Ok(out)
}

/// Decodes until the end of `s` or, `in_repeat`, an unescaped `}`; returns
/// what is left after that `}`.
fn decode_into<'a>(mut s: &'a str, out: &mut Vec<u8>, in_repeat: bool) -> Result<&'a str, String> {
    while let Some(c) = s.chars().next() {
        s = &s[c.len_utf8()..];
        match c {
            '\\' => {
                let e = s.chars().next().ok_or("a '\\' at the end of the line")?;
                s = &s[e.len_utf8()..];
                match e {
                    'n' => out.push(b'\n'),
                    'r' => out.push(b'\r'),
                    't' => out.push(b'\t'),
                    '0' => out.push(0),
                    '\\' | '$' | '{' | '}' => out.push(e as u8),
                    'x' => {
                        let hex = s.get(..2).ok_or("\\x needs two hex digits")?;
                        let b = u8::from_str_radix(hex, 16)
                            .map_err(|_| format!("\\x{hex}: not two hex digits"))?;
                        out.push(b);
                        s = &s[2..];
                    }
                    other => return Err(format!("unknown escape \\{other}")),
                }
            }
            '{' => {
                let (n, body) = s
                    .split_once('*')
                    .ok_or("'{' starts a repeat {N*TEXT}; write \\{ for a literal '{'")?;
                let n: usize = n
                    .parse()
                    .map_err(|_| format!("{{{n}*...}}: {n:?} is not a count"))?;
                let mut once = Vec::new();
                s = decode_into(body, &mut once, true)?;
                if n.saturating_mul(once.len()) > 64 << 20 {
                    return Err("a repeat over 64 MiB".into());
                }
                for _ in 0..n {
                    out.extend_from_slice(&once);
                }
            }
            '}' if in_repeat => return Ok(s),
            '}' => return Err("'}' without '{'; write \\} for a literal '}'".into()),
            _ => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    if in_repeat {
        return Err("unclosed {N*TEXT}".into());
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_repeats_decode_to_bytes() {
        assert_eq!(decode_bytes(r"a\x1b[2J\r\n").unwrap(), b"a\x1b[2J\r\n");
        assert_eq!(decode_bytes(r"\xff\0\t\\\$\{\}").unwrap(), b"\xff\0\t\\${}");
        assert_eq!(decode_bytes("{3*ab}c").unwrap(), b"abababc");
        assert_eq!(decode_bytes(r"{2*\x00{2*y}}").unwrap(), b"\0yy\0yy");
        assert_eq!(decode_bytes("{4097*x}").unwrap().len(), 4097);
        assert_eq!(decode_bytes("é").unwrap(), "é".as_bytes());
        for bad in [r"\q", r"\x1", r"\xzz", "{3x}", "{3*x", "x}", "\\"] {
            assert!(decode_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn variables_are_substituted_and_quoted() {
        let vars = Vars::from([("bob".into(), "127.0.0.1:5".into())]);
        let lit = |s| substitute(s, &vars, Mode::Literal, &|v| v.to_string());
        assert_eq!(lit("to|$bob|hi $$5").unwrap(), "to|127.0.0.1:5|hi $5");
        assert_eq!(lit("${bob}x").unwrap(), "127.0.0.1:5x");
        assert!(lit("$carol").unwrap_err().starts_with("$carol is not set"));
        let re = |s| substitute(s, &vars, Mode::Backslashed, &|v| regex::escape(v));
        assert_eq!(re(r"^<$bob> \$bob$").unwrap(), r"^<127\.0\.0\.1:5> \$bob$");
        assert_eq!(re("a$|b$").unwrap(), "a$|b$");
        assert_eq!(
            with_placeholders("$a $b ${c}", Mode::Literal).unwrap(),
            "x x x"
        );
    }
}
