//! Plain-HTTP ClickHouse queries (`FORMAT TSV`): DDL for the Kafka-engine contender and reading
//! totals as text, so decimals are parsed exactly from their digits.

use anyhow::{bail, Result};

/// A ClickHouse server's HTTP interface.
#[derive(Debug, Clone)]
pub struct ClickHouse {
    /// e.g. `http://127.0.0.1:8123`.
    url: String,
    /// Reused connections.
    http: reqwest::Client,
}

impl ClickHouse {
    /// The server at `url` (user `default`, no password: the local stack's).
    pub fn new(url: &str) -> ClickHouse {
        ClickHouse {
            url: url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// Runs `sql` and returns the response body; a ClickHouse error is an error with its text.
    pub async fn query(&self, sql: &str) -> Result<String> {
        let response = self
            .http
            .post(format!("{}/", self.url))
            .body(sql.to_owned())
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        if !status.is_success() {
            bail!(
                "ClickHouse answered {status} to `{}`: {body}",
                first_line(sql)
            );
        }
        Ok(body)
    }

    /// Runs `sql` (ending in `FORMAT TSV`) and splits the rows into fields.
    pub async fn rows(&self, sql: &str) -> Result<Vec<Vec<String>>> {
        let body = self.query(sql).await?;
        Ok(body
            .lines()
            .filter(|line| !line.is_empty())
            .map(|line| line.split('\t').map(unescape).collect())
            .collect())
    }

    /// The single number `sql` returns (0 for an empty answer).
    pub async fn number(&self, sql: &str) -> Result<u64> {
        let body = self.query(sql).await?;
        let text = body.trim();
        if text.is_empty() {
            return Ok(0);
        }
        Ok(text.parse()?)
    }
}

fn first_line(sql: &str) -> &str {
    sql.trim().lines().next().unwrap_or_default()
}

/// TSV escapes (`\t`, `\n`, `\\`, ...) back to text.
fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_owned();
    }
    let mut text = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            text.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => text.push('\t'),
            Some('n') => text.push('\n'),
            Some('0') => text.push('\0'),
            Some(other) => text.push(other),
            None => text.push('\\'),
        }
    }
    text
}
