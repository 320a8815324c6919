//! Go-style durations (`30s`, `1h30m`), read exactly as the CRD's pattern and CEL rules
//! read them, so the operator and the API server agree on what a spec says.

use std::time::Duration;

use super::SpecError;

pub(super) fn parse_duration(field: &'static str, text: &str) -> Result<Duration, SpecError> {
    // humantime also reads units Go (and so the CRD's pattern and CEL) does not know, like
    // "1d" or "2 min"; keep to the Go subset so the operator and the API server agree.
    let parsed = is_go_duration(text)
        .then(|| humantime::parse_duration(text).ok())
        .flatten();
    parsed.ok_or_else(|| SpecError {
        field,
        reason: format!("{text:?} is not a duration like 30s, 5m or 1h30m"),
    })
}

/// Whether `text` matches [`super::DURATION_PATTERN`]: one or more `<digits><ms|s|m|h>`.
fn is_go_duration(text: &str) -> bool {
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h"]
            .into_iter()
            .find(|unit| rest.starts_with(unit));
        match unit {
            Some(unit) => rest = &rest[unit.len()..],
            None => return false,
        }
    }
    !text.is_empty()
}
