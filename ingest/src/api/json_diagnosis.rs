//! Clear messages for the JSON inputs serde_json describes misleadingly: a number too large for its
//! integer field (serde_json says "invalid type: floating point `1e+22`"), and a lone UTF-16
//! surrogate escape (`"\ud800"`, which it reports as "unexpected end of hex escape"). Both run
//! only on the error path, on the text of the one event that failed.

use serde_json::Value;

/// The message for a number too large (or too negative) for the unsigned integer field at `path`,
/// when `message` is serde_json's "floating point … expected u64" for an integer literal.
pub fn integer_out_of_range(
    event_text: &str,
    path: &serde_path_to_error::Path,
    message: &str,
) -> Option<String> {
    if !message.starts_with("invalid type: floating point `") {
        return None;
    }
    let (type_name, largest) = [("u64", u64::MAX), ("u32", u32::MAX.into()), ("u16", 65_535)]
        .into_iter()
        .find(|(type_name, _)| message.ends_with(&format!("expected {type_name}")))?;
    // The workspace enables serde_json's `arbitrary_precision`: a number keeps its exact text.
    let event: Value = serde_json::from_str(event_text).ok()?;
    let Value::Number(number) = value_at(&event, path)? else {
        return None;
    };
    let text = number.to_string();
    let digits = text.strip_prefix('-').unwrap_or(&text);
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let bounds = format!("a {type_name} field holds 0..={largest}");
    Some(if text.starts_with('-') {
        format!("{text} is negative and out of range: {bounds}")
    } else {
        format!(
            "{text} is too large: an integer of {} digits, {bounds}",
            digits.len()
        )
    })
}

fn value_at<'a>(value: &'a Value, path: &serde_path_to_error::Path) -> Option<&'a Value> {
    path.iter().try_fold(value, |value, segment| match segment {
        serde_path_to_error::Segment::Seq { index } => value.get(index),
        serde_path_to_error::Segment::Map { key } => value.get(key.as_str()),
        _ => None,
    })
}

/// The message for a string holding a lone UTF-16 surrogate escape, if `event_text` has one: a
/// `\uD800`–`\uDBFF` escape not followed by a `\uDC00`–`\uDFFF` one, or the latter alone.
pub fn lone_surrogate(event_text: &str) -> Option<String> {
    let bytes = event_text.as_bytes();
    let escape_at = |position: usize| -> Option<u16> {
        let hex = bytes.get(position..position + 6)?;
        if !hex.starts_with(b"\\u") {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16).ok()
    };
    let mut position = 0;
    while position < bytes.len() {
        if bytes[position] != b'\\' {
            position += 1;
            continue;
        }
        let Some(unit) = escape_at(position) else {
            position += 2; // `\"`, `\\`, `\n` …: the escaped character cannot start an escape.
            continue;
        };
        let escape = &event_text[position..position + 6];
        match unit {
            0xD800..=0xDBFF => match escape_at(position + 6) {
                Some(0xDC00..=0xDFFF) => position += 12,
                _ => return Some(lone_surrogate_message(escape, "high")),
            },
            0xDC00..=0xDFFF => return Some(lone_surrogate_message(escape, "low")),
            _ => position += 6,
        }
    }
    None
}

fn lone_surrogate_message(escape: &str, half: &str) -> String {
    format!(
        "a string holds the lone UTF-16 {half} surrogate escape {escape}, which is not a character: \
         strings must be valid Unicode (a \\uD800-\\uDBFF escape must be followed by a \
         \\uDC00-\\uDFFF one, together one character)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lone_surrogates_and_only_them() {
        assert!(lone_surrogate(r#"{"a":"\ud800"}"#)
            .unwrap()
            .contains("lone UTF-16 high surrogate escape \\ud800"));
        assert!(lone_surrogate(r#"{"a":"x\uDC00y"}"#)
            .unwrap()
            .contains("low surrogate escape \\uDC00"));
        assert!(lone_surrogate(r#"{"a":"\ud800\u0041"}"#).is_some());
        assert_eq!(lone_surrogate(r#"{"a":"\ud83d\ude00 \u00e9"}"#), None);
        // An escaped backslash followed by `ud800` is text, not an escape.
        assert_eq!(lone_surrogate(r#"{"a":"\\ud800"}"#), None);
        assert_eq!(lone_surrogate(r#"{"a":"\u12"}"#), None);
    }
}
