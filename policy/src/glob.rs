//! Model-name globs (`gpt-4o*`, `claude-?-opus`, `gemini-[12].*`), compiled once at load.
//!
//! Syntax: `*` any run of characters (including none and `/`), `?` exactly one character,
//! `[abc]` / `[a-z]` / `[!a-z]` one character in (or not in) a class, `\x` the literal `x`.
//! Matching is case-sensitive, over the whole name, and never allocates. A pattern without any
//! wildcard compiles to a plain string comparison.

use std::fmt;

/// A compiled glob pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    /// The pattern as written, for messages and normalized output.
    source: String,
    /// The compiled form.
    matcher: Matcher,
}

/// How a glob is evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    /// No wildcard: the name must equal this text (escapes removed).
    Exact(String),
    /// Wildcards: a token program run by a backtracking matcher.
    Tokens(Vec<Token>),
}

/// One element of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// This exact character.
    Literal(char),
    /// `?`: any one character.
    AnyOne,
    /// `*`: any run of characters.
    AnyRun,
    /// `[...]`: one character in the ranges, or not in them when `negated`.
    Class {
        /// `[!...]`.
        negated: bool,
        /// Inclusive ranges; a single character `c` is `(c, c)`.
        ranges: Vec<(char, char)>,
    },
}

/// Why a pattern does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad glob {pattern:?}: {reason}")]
pub struct GlobError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Glob {
    /// Compiles a pattern; see the module docs for the syntax.
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        let error = |reason| GlobError {
            pattern: pattern.to_owned(),
            reason,
        };
        if pattern.is_empty() {
            return Err(error("empty pattern"));
        }
        let mut tokens = Vec::new();
        let mut characters = pattern.chars();
        while let Some(character) = characters.next() {
            match character {
                '*' => {
                    // `**` means the same as `*`; keeping one keeps backtracking linear-ish.
                    if tokens.last() != Some(&Token::AnyRun) {
                        tokens.push(Token::AnyRun);
                    }
                }
                '?' => tokens.push(Token::AnyOne),
                '\\' => match characters.next() {
                    Some(escaped) => tokens.push(Token::Literal(escaped)),
                    None => return Err(error("trailing `\\` escapes nothing")),
                },
                '[' => tokens.push(parse_class(&mut characters).map_err(error)?),
                ']' => return Err(error("`]` without an opening `[` (escape it as `\\]`)")),
                other => tokens.push(Token::Literal(other)),
            }
        }
        let matcher = if tokens
            .iter()
            .all(|token| matches!(token, Token::Literal(_)))
        {
            Matcher::Exact(
                tokens
                    .iter()
                    .map(|token| match token {
                        Token::Literal(character) => *character,
                        _ => unreachable!("checked: all literals"),
                    })
                    .collect(),
            )
        } else {
            Matcher::Tokens(tokens)
        };
        Ok(Glob {
            source: pattern.to_owned(),
            matcher,
        })
    }

    /// Whether `pattern` contains a wildcard (`*`, `?`, `[`); a plain name does not.
    pub fn has_wildcard(pattern: &str) -> bool {
        pattern.contains(['*', '?', '['])
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `name` matches.
    pub fn is_match(&self, name: &str) -> bool {
        match &self.matcher {
            Matcher::Exact(text) => text == name,
            Matcher::Tokens(tokens) => match_tokens(tokens, name),
        }
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.source)
    }
}

/// Parses a class after its `[`, up to and including the closing `]`.
fn parse_class(characters: &mut std::str::Chars<'_>) -> Result<Token, &'static str> {
    let mut negated = false;
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let Some(character) = characters.next() else {
            return Err("unclosed `[`");
        };
        match character {
            '!' if first && !negated => {
                negated = true;
                continue;
            }
            ']' => {
                if ranges.is_empty() {
                    return Err("empty character class `[]`");
                }
                return Ok(Token::Class { negated, ranges });
            }
            '\\' => {
                let escaped = characters.next().ok_or("trailing `\\` escapes nothing")?;
                ranges.push((escaped, escaped));
            }
            low => {
                // A range `a-z`; a `-` right before `]` is a literal `-`.
                let mut lookahead = characters.clone();
                if lookahead.next() == Some('-') {
                    match lookahead.next() {
                        Some(']') | None => ranges.push((low, low)),
                        Some(high) => {
                            if high < low {
                                return Err("reversed range in character class");
                            }
                            ranges.push((low, high));
                            *characters = lookahead;
                        }
                    }
                } else {
                    ranges.push((low, low));
                }
            }
        }
        first = false;
    }
}

/// The classic two-pointer wildcard match: on a mismatch, backtrack to the last `*` and let it
/// swallow one more character. O(pattern × name) in the worst case, no allocation.
fn match_tokens(tokens: &[Token], name: &str) -> bool {
    let name: &[u8] = name.as_bytes();
    let mut token_index = 0;
    let mut byte_index = 0;
    // (token after the last `*`, name position that `*` currently stops at)
    let mut backtrack: Option<(usize, usize)> = None;
    loop {
        if token_index == tokens.len() && byte_index == name.len() {
            return true;
        }
        let step = match tokens.get(token_index) {
            Some(Token::AnyRun) => {
                backtrack = Some((token_index + 1, byte_index));
                token_index += 1;
                continue;
            }
            Some(token) => next_char(name, byte_index).and_then(|(character, width)| {
                token_accepts(token, character).then_some(byte_index + width)
            }),
            None => None,
        };
        match step {
            Some(next_byte) => {
                token_index += 1;
                byte_index = next_byte;
            }
            None => {
                let Some((resume_token, star_stop)) = backtrack else {
                    return false;
                };
                let Some((_, width)) = next_char(name, star_stop) else {
                    return false;
                };
                backtrack = Some((resume_token, star_stop + width));
                token_index = resume_token;
                byte_index = star_stop + width;
            }
        }
    }
}

/// The character starting at `index` of a UTF-8 string's bytes, and its width.
fn next_char(name: &[u8], index: usize) -> Option<(char, usize)> {
    let rest = name.get(index..)?;
    // `index` is always a char boundary: it only advances by whole characters.
    let text = std::str::from_utf8(rest).ok()?;
    let character = text.chars().next()?;
    Some((character, character.len_utf8()))
}

/// Whether a non-`*` token accepts one character.
fn token_accepts(token: &Token, character: char) -> bool {
    match token {
        Token::Literal(literal) => *literal == character,
        Token::AnyOne => true,
        Token::Class { negated, ranges } => {
            let inside = ranges
                .iter()
                .any(|(low, high)| (*low..=*high).contains(&character));
            inside != *negated
        }
        Token::AnyRun => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, name: &str) -> bool {
        Glob::new(pattern).expect("valid pattern").is_match(name)
    }

    #[test]
    fn wildcards_match_whole_names() {
        assert!(matches("gpt-4o*", "gpt-4o"));
        assert!(matches("gpt-4o*", "gpt-4o-mini-2024-07-18"));
        assert!(!matches("gpt-4o*", "azure/gpt-4o"));
        assert!(matches("*gpt-4o*", "azure/gpt-4o-mini"));
        assert!(matches("claude-?-opus", "claude-3-opus"));
        assert!(!matches("claude-?-opus", "claude-35-opus"));
        assert!(matches("gemini-[12].*", "gemini-2.5-pro"));
        assert!(!matches("gemini-[!12].*", "gemini-2.5-pro"));
        assert!(matches("o[1-4]", "o3"));
        assert!(matches("a*b*c", "aXbYbZc"));
        assert!(!matches("a*b*c", "aXbYbZ"));
        assert!(matches("literal\\*", "literal*"));
        assert!(matches("é*", "éclair"));
        assert!(matches("x-[a-]", "x--"));
    }

    #[test]
    fn bad_patterns_are_rejected_with_a_reason() {
        for (pattern, reason) in [
            ("", "empty"),
            ("gpt-[4", "unclosed"),
            ("gpt-[]", "empty character class"),
            ("gpt]", "without an opening"),
            ("gpt\\", "trailing"),
            ("[z-a]", "reversed"),
        ] {
            let error = Glob::new(pattern).expect_err(pattern);
            assert!(error.reason.contains(reason), "{pattern}: {error}");
        }
    }
}
