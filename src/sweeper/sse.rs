//! Kept over eventsource-stream 0.2 and sse-stream 0.3: neither bounds a line's or an event's size.
//!
//! A minimal, bounded Server-Sent Events parser: enough of the SSE format to read the sidecar's
//! stream (`data:` lines, comments, blank-line dispatch), and strict about size so a broken peer
//! cannot make the sweeper buffer without limit.

/// The stream broke the size limit; the caller drops the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an event stream line or event exceeded {limit} bytes")]
pub struct TooLong {
    pub limit: usize,
}

/// Accumulates bytes and yields the `data` of each complete event.
#[derive(Debug)]
pub struct Parser {
    line: Vec<u8>,
    data: String,
    has_data: bool,
    limit: usize,
}

impl Parser {
    /// A parser that refuses lines and events longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { line: Vec::new(), data: String::new(), has_data: false, limit }
    }

    /// Feeds `bytes`; returns the data of every event they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, TooLong> {
        let mut events = Vec::new();
        for &byte in bytes {
            if byte == b'\n' {
                let line = std::mem::take(&mut self.line);
                let line = line.strip_suffix(b"\r").unwrap_or(&line);
                if let Some(event) = self.line_done(line)? {
                    events.push(event);
                }
            } else {
                if self.line.len() >= self.limit {
                    return Err(TooLong { limit: self.limit });
                }
                self.line.push(byte);
            }
        }
        Ok(events)
    }

    fn line_done(&mut self, line: &[u8]) -> Result<Option<String>, TooLong> {
        if line.is_empty() {
            // A blank line dispatches the event; events without data carry nothing for us.
            let had_data = std::mem::replace(&mut self.has_data, false);
            let data = std::mem::take(&mut self.data);
            return Ok(had_data.then_some(data));
        }
        if line.starts_with(b":") {
            return Ok(None); // comment (keep-alive)
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        // `event`, `id` and `retry` mean nothing in this contract; unknown fields are ignored
        // as the SSE specification says.
        if field == b"data" {
            if self.data.len() + value.len() + 1 > self.limit {
                return Err(TooLong { limit: self.limit });
            }
            if self.has_data {
                self.data.push('\n');
            }
            // Invalid UTF-8 becomes U+FFFD and then fails JSON parsing: a malformed event.
            self.data.push_str(&String::from_utf8_lossy(value));
            self.has_data = true;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_on_blank_lines_across_chunks() {
        let mut parser = Parser::new(1024);
        assert_eq!(parser.push(b"data: {\"a\"").unwrap(), Vec::<String>::new());
        assert_eq!(parser.push(b":1}\n").unwrap(), Vec::<String>::new());
        assert_eq!(parser.push(b"\ndata:x\r\n\r\n").unwrap(), vec!["{\"a\":1}", "x"]);
    }

    #[test]
    fn comments_and_other_fields_are_ignored() {
        let mut parser = Parser::new(1024);
        let events = parser.push(b": keep-alive\n\nevent: state\nid: 7\nretry: 100\ndata: y\n\n").unwrap();
        assert_eq!(events, vec!["y"]);
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        let mut parser = Parser::new(1024);
        assert_eq!(parser.push(b"data: a\ndata: b\n\n").unwrap(), vec!["a\nb"]);
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut parser = Parser::new(16);
        assert_eq!(parser.push(&[b'x'; 17]), Err(TooLong { limit: 16 }));
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut parser = Parser::new(16);
        assert_eq!(parser.push(b"data: 0123456789\ndata: 0123456789\n"), Err(TooLong { limit: 16 }));
    }

    #[test]
    fn invalid_utf8_is_kept_as_a_replacement_character() {
        let mut parser = Parser::new(64);
        assert_eq!(parser.push(b"data: \xff\n\n").unwrap(), vec!["\u{fffd}"]);
    }
}
