//! Where things are in a policy file: line ranges of policies and lines of keys.
//!
//! serde_yaml_ng reports a location for the errors it raises, but its `Value` keeps no positions,
//! so the checks that run after deserializing (duplicate ids, thresholds, glob syntax …) could
//! not say where the offending key is. This module finds it by scanning the file text, which is
//! enough for the block-style YAML policies are written in:
//!
//! - A file holding a list is split into one **block** per item: the lines from an item's `-` at
//!   the list's indentation up to the next one. A file holding one mapping is one block.
//! - A key path (`["window", "campaign", "end"]`) is found by looking for `key:` at the
//!   indentation of the block's (or the parent's) keys, then for the next key among the lines
//!   indented deeper than the parent, and in the parent's own line for flow style
//!   (`retry_policy: {max_attempts_per_action: 3}`).
//! - When a key is missing, the deepest key of the path that exists is reported (for a missing
//!   `action.degrade_to`, the `action:` line), and failing that the block's first line.
//!
//! The same scan reads the **source text of unquoted numbers** (see [`crate::amount`]): YAML
//! parsers turn `12.50` into a float, which is not exact; the text after `hard_cap:` is.
//! Limits: keys written as aliases, merge keys (`<<`) and multi-line flow mappings are not found;
//! the report then falls back to the parent's or block's line, and an amount must be quoted.

/// A 1-based line and column in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Line, from 1.
    pub line: usize,
    /// Column (in characters), from 1.
    pub column: usize,
}

/// The lines (0-based, end exclusive) of one policy in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Block {
    /// First line of the policy (its `-` for a list item).
    pub(crate) start: usize,
    /// One past its last line.
    pub(crate) end: usize,
}

/// A key found in the text.
#[derive(Debug, Clone, Copy)]
struct FoundKey<'a> {
    /// 0-based line index.
    line: usize,
    /// 0-based byte offset of the key in the line.
    key_offset: usize,
    /// Column the key's siblings start at (in bytes; indentation is ASCII spaces).
    indent: usize,
    /// The rest of the line after `key:`.
    rest: &'a str,
    /// Whether the key was found inside a flow mapping on its parent's line.
    in_flow: bool,
}

/// A policy file's text, split into lines.
pub(crate) struct SourceMap<'a> {
    /// The lines, without their terminators.
    lines: Vec<&'a str>,
}

impl<'a> SourceMap<'a> {
    /// Splits `text` into lines.
    pub(crate) fn new(text: &'a str) -> Self {
        SourceMap {
            lines: text.lines().collect(),
        }
    }

    /// The whole file as one block.
    pub(crate) fn whole(&self) -> Block {
        Block {
            start: 0,
            end: self.lines.len(),
        }
    }

    /// The blocks of a file whose top level is a block-style list: one per `-` at the
    /// indentation of the first one. Comments and blank lines before the first item belong to
    /// no block.
    pub(crate) fn list_items(&self) -> Vec<Block> {
        let mut starts = Vec::new();
        let mut list_indent = None;
        for (index, line) in self.lines.iter().enumerate() {
            if is_blank_or_comment(line) || line.trim_start().starts_with("---") {
                continue;
            }
            let indent = leading_spaces(line);
            let is_item = is_dash_item(&line[indent..]);
            match list_indent {
                None if is_item => {
                    list_indent = Some(indent);
                    starts.push(index);
                }
                Some(list) if is_item && indent == list => starts.push(index),
                _ => {}
            }
        }
        let mut blocks = Vec::with_capacity(starts.len());
        for (position, start) in starts.iter().enumerate() {
            let end = starts
                .get(position + 1)
                .copied()
                .unwrap_or(self.lines.len());
            blocks.push(Block { start: *start, end });
        }
        blocks
    }

    /// The text of a block as a standalone YAML mapping: the lines before it blanked (so
    /// parser line numbers stay those of the file) and the item's `-` replaced by a space (so
    /// columns stay too).
    pub(crate) fn block_as_mapping(&self, block: Block) -> String {
        let mut text = String::new();
        for _ in 0..block.start {
            text.push('\n');
        }
        for (index, line) in self.lines[block.start..block.end].iter().enumerate() {
            if index == 0 {
                let indent = leading_spaces(line);
                text.push_str(&line[..indent]);
                text.push(' ');
                text.push_str(&line[indent + 1..]);
            } else {
                text.push_str(line);
            }
            text.push('\n');
        }
        text
    }

    /// The position of the deepest key of `path` found in `block`, else of the block's first
    /// key (else its first line).
    pub(crate) fn locate(&self, block: Block, path: &[&str]) -> Position {
        let mut best = None;
        self.walk(block, path, |found| best = Some(found));
        match best {
            Some(found) => self.position_of(found),
            None => self.block_start(block),
        }
    }

    /// The source text of the scalar value of `path` (the full path must exist), trimmed, with a
    /// trailing comment removed; `None` when the path is not found or holds no inline scalar.
    pub(crate) fn scalar_text(&self, block: Block, path: &[&str]) -> Option<&'a str> {
        let mut found_keys = Vec::new();
        self.walk(block, path, |found| found_keys.push(found));
        if found_keys.len() != path.len() {
            return None;
        }
        let last = found_keys.pop()?;
        let mut value = last.rest.trim_start();
        // An anchor (`&cap 12.5`) names the value; the number follows it.
        if let Some(anchored) = value.strip_prefix('&') {
            value = anchored
                .split_once([' ', '\t'])
                .map_or("", |(_, number)| number.trim_start());
        }
        let end = if last.in_flow {
            value.find([',', '}']).unwrap_or(value.len())
        } else {
            comment_start(value).unwrap_or(value.len())
        };
        let value = value[..end].trim();
        (!value.is_empty()).then_some(value)
    }

    /// Finds the keys of `path` one after the other, calling `on_found` for each found.
    fn walk(&self, block: Block, path: &[&str], mut on_found: impl FnMut(FoundKey<'a>)) {
        let Some((first, rest_path)) = path.split_first() else {
            return;
        };
        let Some(mut parent) = self.find_in_lines(block.start, block.end, first) else {
            return;
        };
        on_found(parent);
        for key in rest_path {
            let Some(child) = self.find_child(parent, key) else {
                return;
            };
            on_found(child);
            parent = child;
        }
    }

    /// A key among the mapping keys of lines `start..end`: those at the indentation of the first
    /// key in the range.
    fn find_in_lines(&self, start: usize, end: usize, key: &str) -> Option<FoundKey<'a>> {
        let mut sibling_indent = None;
        for index in start..end.min(self.lines.len()) {
            let line = self.lines[index];
            if is_blank_or_comment(line) {
                continue;
            }
            let (indent, content) = effective_content(line);
            let sibling_indent = *sibling_indent.get_or_insert(indent);
            if indent != sibling_indent {
                continue;
            }
            if let Some(rest) = strip_key(content, key) {
                return Some(FoundKey {
                    line: index,
                    key_offset: indent,
                    indent,
                    rest,
                    in_flow: false,
                });
            }
        }
        None
    }

    /// A key under `parent`: inline in a flow mapping on the parent's line, or among the lines
    /// indented deeper than the parent.
    fn find_child(&self, parent: FoundKey<'a>, key: &str) -> Option<FoundKey<'a>> {
        let inline = parent.rest.trim_start();
        if inline.starts_with('{') {
            let line = self.lines[parent.line];
            let flow_start = line.len() - inline.len();
            return find_in_flow(inline, key).map(|(offset, rest)| FoundKey {
                line: parent.line,
                key_offset: flow_start + offset,
                indent: flow_start + offset,
                rest,
                in_flow: true,
            });
        }
        let start = parent.line + 1;
        let mut end = start;
        while end < self.lines.len() {
            let line = self.lines[end];
            if !is_blank_or_comment(line) {
                let indent = leading_spaces(line);
                // A compact list under the key sits at the key's indentation, after a `-`.
                let belongs = indent > parent.indent
                    || (indent == parent.indent && is_dash_item(&line[indent..]));
                if !belongs {
                    break;
                }
            }
            end += 1;
        }
        self.find_in_lines(start, end, key)
    }

    /// The 1-based position of a found key.
    fn position_of(&self, found: FoundKey<'a>) -> Position {
        let line = self.lines[found.line];
        let column = line
            .get(..found.key_offset)
            .map_or(found.key_offset, |prefix| prefix.chars().count());
        Position {
            line: found.line + 1,
            column: column + 1,
        }
    }

    /// The first key of a block (past its `-`), or its first line.
    fn block_start(&self, block: Block) -> Position {
        for index in block.start..block.end.min(self.lines.len()) {
            let line = self.lines[index];
            if is_blank_or_comment(line) || line.trim_start().starts_with("---") {
                continue;
            }
            let (indent, _) = effective_content(line);
            return Position {
                line: index + 1,
                column: indent + 1,
            };
        }
        Position {
            line: block.start + 1,
            column: 1,
        }
    }
}

/// Number of leading spaces.
fn leading_spaces(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Whether a line holds nothing but whitespace or a comment.
fn is_blank_or_comment(line: &str) -> bool {
    let trimmed = line.trim_start();
    trimmed.is_empty() || trimmed.starts_with('#')
}

/// Whether content (after indentation) starts a list item: `-` then space or end of line.
fn is_dash_item(content: &str) -> bool {
    content == "-" || content.starts_with("- ") || content.starts_with("-\t")
}

/// A line's content past its indentation and any list dashes, and the column it starts at.
fn effective_content(line: &str) -> (usize, &str) {
    let mut indent = leading_spaces(line);
    let mut content = &line[indent..];
    while is_dash_item(content) {
        let after_dash = &content[1..];
        let spaces = after_dash.len() - after_dash.trim_start().len();
        indent += 1 + spaces;
        content = after_dash.trim_start();
    }
    (indent, content)
}

/// If `content` starts with `key:` (optionally quoted) followed by a space or the end, the rest
/// after the colon.
fn strip_key<'t>(content: &'t str, key: &str) -> Option<&'t str> {
    let after_key = content
        .strip_prefix(key)
        .or_else(|| {
            content
                .strip_prefix('"')
                .and_then(|quoted| quoted.strip_prefix(key))
                .and_then(|quoted| quoted.strip_prefix('"'))
        })
        .or_else(|| {
            content
                .strip_prefix('\'')
                .and_then(|quoted| quoted.strip_prefix(key))
                .and_then(|quoted| quoted.strip_prefix('\''))
        })?;
    let rest = after_key
        .trim_start_matches([' ', '\t'])
        .strip_prefix(':')?;
    (rest.is_empty() || rest.starts_with([' ', '\t'])).then_some(rest)
}

/// `key:` inside a one-line flow mapping: its byte offset and the text after the colon.
fn find_in_flow<'t>(flow: &'t str, key: &str) -> Option<(usize, &'t str)> {
    let mut search_from = 0;
    while let Some(relative) = flow[search_from..].find(key) {
        let offset = search_from + relative;
        let before = flow[..offset].trim_end_matches([' ', '"', '\'']);
        if before.ends_with(['{', ',']) {
            let after = flow[offset + key.len()..].trim_start_matches(['"', '\'', ' ']);
            if let Some(rest) = after.strip_prefix(':') {
                return Some((offset, rest));
            }
        }
        search_from = offset + key.len();
    }
    None
}

/// Where a trailing ` #comment` starts in a plain scalar's line.
fn comment_start(value: &str) -> Option<usize> {
    if value.starts_with('#') {
        return Some(0);
    }
    value.find(" #").or_else(|| value.find("\t#"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "\
# two policies
- id: first
  hard_cap: 12.50 # usd
  owner:
    team: search
    slack_channel: '#a'
  notify:
    slack_channel: '#b'
  soft_alerts:
  - 50
  - 75
  retry_policy: {max_attempts_per_action: 3, max_fallback_cost_usd: 2.5}

-   id: second
    window:
      kind: campaign
      campaign:
        end: 2025-01-01
";

    #[test]
    fn splits_items_and_finds_nested_keys() {
        let map = SourceMap::new(LIST);
        let blocks = map.list_items();
        assert_eq!(
            blocks,
            vec![Block { start: 1, end: 13 }, Block { start: 13, end: 18 }]
        );
        let first = blocks[0];
        let at = |path: &[&str]| {
            let position = map.locate(first, path);
            (position.line, position.column)
        };
        assert_eq!(at(&["id"]), (2, 3));
        assert_eq!(at(&["notify", "slack_channel"]), (8, 5));
        assert_eq!(at(&["owner", "slack_channel"]), (6, 5));
        assert_eq!(at(&["soft_alerts"]), (9, 3));
        assert_eq!(at(&["retry_policy", "max_fallback_cost_usd"]), (12, 46));
        // Missing keys: the deepest found parent.
        assert_eq!(at(&["owner", "contact"]), (4, 3));
        assert_eq!(at(&["nothing"]), (2, 3));
        assert_eq!(map.scalar_text(first, &["hard_cap"]), Some("12.50"));
        assert_eq!(
            map.scalar_text(first, &["retry_policy", "max_fallback_cost_usd"]),
            Some("2.5")
        );
        let second = blocks[1];
        assert_eq!(
            map.locate(second, &["window", "campaign", "end"]),
            Position {
                line: 18,
                column: 9
            }
        );
        assert_eq!(map.scalar_text(second, &["window", "time_zone"]), None);
    }

    #[test]
    fn blocks_parse_with_file_positions() {
        let map = SourceMap::new(LIST);
        let second = map.list_items()[1];
        let text = map.block_as_mapping(second);
        assert_eq!(text.lines().nth(13), Some("    id: second"));
    }
}
