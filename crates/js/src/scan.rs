//! Config-time check for constructs that cannot work in the sandbox.
//!
//! The sandbox itself is what stops a script (the globals are gone and the
//! constructors are neutralised), so this scan is about telling the user early
//! and precisely: a pipeline whose script calls `eval` or `fetch` is rejected
//! with the line and column of the call instead of failing every record later.
//! It runs after QuickJS has accepted the syntax, with a small tokenizer that
//! skips comments, strings, template text and regular expressions, and reports
//! identifiers that name something unavailable, except as property names
//! (`r.eval`, `{ fetch: 1 }`), which are ordinary record fields.

use crate::ScriptProblem;

/// Identifiers that name something the sandbox does not provide, with why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("eval", "`eval` is not available in scripts"),
    (
        "Function",
        "the `Function` constructor is not available in scripts",
    ),
    ("import", "scripts cannot import modules"),
    ("require", "scripts cannot load modules (`require`)"),
    (
        "async",
        "async functions are not supported: scripts run synchronously",
    ),
    (
        "Promise",
        "`Promise` is not available: scripts run synchronously",
    ),
    ("WebAssembly", "`WebAssembly` is not available in scripts"),
    (
        "SharedArrayBuffer",
        "`SharedArrayBuffer` is not available in scripts",
    ),
    ("Atomics", "`Atomics` is not available in scripts"),
    ("setTimeout", "timers are not available in scripts"),
    ("setInterval", "timers are not available in scripts"),
    ("queueMicrotask", "timers are not available in scripts"),
    ("fetch", "scripts have no network access"),
    ("XMLHttpRequest", "scripts have no network access"),
    ("WebSocket", "scripts have no network access"),
];

/// Reports every forbidden identifier with its 1-based line and column.
pub(crate) fn forbidden_constructs(source: &str) -> Vec<ScriptProblem> {
    let mut problems = Vec::new();
    let mut lexer = Lexer::new(source);
    let mut tokens: Vec<Token> = Vec::new();
    while let Some(token) = lexer.next_token() {
        tokens.push(token);
    }
    for (i, token) in tokens.iter().enumerate() {
        let Tok::Ident(name) = token.kind else {
            continue;
        };
        let Some((_, message)) = FORBIDDEN.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        let after_dot = i > 0 && matches!(tokens[i - 1].kind, Tok::Punct(".") | Tok::Punct("?."));
        let is_key = matches!(tokens.get(i + 1).map(|t| &t.kind), Some(Tok::Punct(":")))
            && i > 0
            && matches!(tokens[i - 1].kind, Tok::Punct("{") | Tok::Punct(","));
        // `x instanceof Function` is fine: the stand-in keeps `instanceof`.
        let instanceof =
            name == "Function" && i > 0 && matches!(tokens[i - 1].kind, Tok::Ident("instanceof"));
        if after_dot || is_key || instanceof {
            continue;
        }
        problems.push(ScriptProblem {
            line: token.line,
            column: token.column,
            message: (*message).to_owned(),
        });
    }
    problems
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok<'s> {
    Ident(&'s str),
    Punct(&'s str),
    /// Numbers, strings, template pieces, regular expressions.
    Literal,
}

#[derive(Debug)]
struct Token<'s> {
    kind: Tok<'s>,
    line: u32,
    column: u32,
}

struct Lexer<'s> {
    src: &'s str,
    pos: usize,
    line: u32,
    line_start: usize,
    /// Brace depth at which each open template `${` resumes template text.
    templates: Vec<usize>,
    braces: usize,
    /// Whether a `/` here would start a regular expression.
    regex_ok: bool,
}

impl<'s> Lexer<'s> {
    fn new(src: &'s str) -> Self {
        Lexer {
            src,
            pos: 0,
            line: 1,
            line_start: 0,
            templates: Vec::new(),
            braces: 0,
            regex_ok: true,
        }
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn peek2(&self) -> Option<char> {
        let mut it = self.src[self.pos..].chars();
        it.next();
        it.next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line += 1;
            self.line_start = self.pos;
        }
        Some(c)
    }

    fn column(&self, at: usize) -> u32 {
        let chars = self.src[self.line_start..at].chars().count();
        u32::try_from(chars).unwrap_or(u32::MAX).saturating_add(1)
    }

    fn next_token(&mut self) -> Option<Token<'s>> {
        loop {
            let c = self.peek()?;
            if c.is_whitespace() {
                self.bump();
            } else if c == '/' && self.peek2() == Some('/') {
                while let Some(c) = self.peek() {
                    if c == '\n' {
                        break;
                    }
                    self.bump();
                }
            } else if c == '/' && self.peek2() == Some('*') {
                self.bump();
                self.bump();
                while let Some(c) = self.bump() {
                    if c == '*' && self.peek() == Some('/') {
                        self.bump();
                        break;
                    }
                }
            } else {
                break;
            }
        }
        let start = self.pos;
        let line = self.line;
        let column = self.column(start);
        let c = self.peek()?;
        let kind = if c.is_alphabetic() || c == '_' || c == '$' || c == '\\' {
            while let Some(c) = self.peek() {
                if c.is_alphanumeric() || c == '_' || c == '$' || c == '\\' {
                    self.bump();
                } else {
                    break;
                }
            }
            let word = &self.src[start..self.pos];
            // After these keywords an expression starts, so `/` is a regex.
            self.regex_ok = matches!(
                word,
                "return"
                    | "typeof"
                    | "instanceof"
                    | "in"
                    | "of"
                    | "new"
                    | "delete"
                    | "void"
                    | "throw"
                    | "case"
                    | "do"
                    | "else"
                    | "yield"
                    | "await"
            );
            Tok::Ident(word)
        } else if c.is_ascii_digit()
            || (c == '.' && self.peek2().is_some_and(|d| d.is_ascii_digit()))
        {
            while let Some(c) = self.peek() {
                if c.is_alphanumeric() || c == '.' || c == '_' {
                    self.bump();
                } else {
                    break;
                }
            }
            self.regex_ok = false;
            Tok::Literal
        } else if c == '"' || c == '\'' {
            self.bump();
            while let Some(d) = self.bump() {
                if d == '\\' {
                    self.bump();
                } else if d == c || d == '\n' {
                    break;
                }
            }
            self.regex_ok = false;
            Tok::Literal
        } else if c == '`' {
            self.bump();
            self.template_text();
            Tok::Literal
        } else if c == '}' && self.templates.last() == Some(&self.braces) {
            self.templates.pop();
            self.braces -= 1;
            self.bump();
            self.template_text();
            Tok::Literal
        } else if c == '/' && self.regex_ok {
            self.bump();
            let mut in_class = false;
            while let Some(d) = self.bump() {
                match d {
                    '\\' => {
                        self.bump();
                    }
                    '[' => in_class = true,
                    ']' => in_class = false,
                    '/' if !in_class => break,
                    '\n' => break,
                    _ => {}
                }
            }
            while self.peek().is_some_and(|f| f.is_alphanumeric()) {
                self.bump();
            }
            self.regex_ok = false;
            Tok::Literal
        } else {
            const PUNCTS: &[&str] = &[
                "?.", "=>", "...", "{", "}", "(", ")", "[", "]", ".", ",", ":",
            ];
            let rest = &self.src[self.pos..];
            let punct = PUNCTS
                .iter()
                .find(|p| {
                    rest.starts_with(**p)
                        && !(**p == "?." && rest[2..].starts_with(|d: char| d.is_ascii_digit()))
                })
                .copied();
            match punct {
                Some(p) => {
                    for _ in 0..p.len() {
                        self.bump();
                    }
                    match p {
                        "{" => self.braces += 1,
                        "}" => self.braces = self.braces.saturating_sub(1),
                        _ => {}
                    }
                    self.regex_ok = !matches!(p, ")" | "]" | "}");
                    Tok::Punct(p)
                }
                None => {
                    self.bump();
                    self.regex_ok = true;
                    Tok::Punct("op")
                }
            }
        };
        Some(Token { kind, line, column })
    }

    /// Skips template text up to the closing backtick or a `${`.
    fn template_text(&mut self) {
        while let Some(c) = self.bump() {
            match c {
                '\\' => {
                    self.bump();
                }
                '`' => break,
                '$' if self.peek() == Some('{') => {
                    self.bump();
                    // The `{` opened here is closed by the `}` that resumes
                    // the template; count it as open until then.
                    self.braces += 1;
                    self.templates.push(self.braces);
                    self.regex_ok = true;
                    return;
                }
                _ => {}
            }
        }
        self.regex_ok = false;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn found(src: &str) -> Vec<(u32, u32, String)> {
        forbidden_constructs(src)
            .into_iter()
            .map(|p| (p.line, p.column, p.message))
            .collect()
    }

    #[test]
    fn reports_forbidden_identifiers_with_position() {
        let p = found("function transform(r) {\n  return eval('1');\n}");
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].0, p[0].1), (2, 10));
        assert!(p[0].2.contains("eval"));
        let p = found("const f = new Function('x');\nfetch('http://x')");
        assert_eq!(
            p.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(),
            [(1, 15), (2, 1)]
        );
    }

    #[test]
    fn property_names_strings_comments_and_regexes_are_not_reported() {
        let src = r#"
            // eval in a comment
            /* fetch in a block comment */
            function transform(r) {
              r.eval = "eval"; r.fetch = 'Function';
              const o = { import: 1, async: 2 };
              const re = /eval|fetch/g;
              if (r.f instanceof Function) r.f = 1;
              return r?.require ?? `template eval`;
            }"#;
        assert_eq!(found(src), []);
    }

    #[test]
    fn template_expressions_are_scanned() {
        let p = found("const s = `a ${ {x: 1}.x } b ${eval('1')} c`;");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].1, 32);
        assert_eq!(found("const s = `${`${1}`}`; const t = {a: 1};"), []);
    }

    #[test]
    fn division_is_not_a_regex() {
        // If `/ 2 /` were taken for a regex, `eval` would be hidden.
        let p = found("const x = a / 2 / eval(1);");
        assert_eq!(p.len(), 1);
    }
}
