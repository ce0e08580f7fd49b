//! A JSON syntax check for the awareness states handed to Yjs clients.
//!
//! Yjs clients `JSON.parse` every awareness state they receive, and an
//! exception there escapes the provider's message handler (in Node it ends
//! the process). Native clients publish opaque bytes, so a state goes to
//! Yjs clients only if it is valid JSON. One pass, no allocation, nesting
//! bounded by [`MAX_DEPTH`] (counted, not recursed).

/// Deepest nesting of arrays and objects accepted.
pub(crate) const MAX_DEPTH: usize = 64;

/// Whether `text` is one JSON value (RFC 8259), surrounded by whitespace at
/// most, nesting at most [`MAX_DEPTH`] deep.
pub(crate) fn is_json(text: &[u8]) -> bool {
    let mut p = Parser { s: text, i: 0 };
    p.value() && {
        p.ws();
        p.i == p.s.len()
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// One value; containers are walked with an explicit stack of the
    /// closing brackets owed (bounded by `MAX_DEPTH`).
    fn value(&mut self) -> bool {
        let mut stack = [0u8; MAX_DEPTH];
        let mut depth = 0;
        loop {
            // A value is expected here.
            self.ws();
            match self.peek() {
                Some(open @ (b'[' | b'{')) => {
                    if depth == MAX_DEPTH {
                        return false;
                    }
                    self.i += 1;
                    let close = if open == b'[' { b']' } else { b'}' };
                    stack[depth] = close;
                    depth += 1;
                    if self.eat(close) {
                        depth -= 1;
                    } else {
                        if close == b'}' && !(self.string() && self.eat(b':')) {
                            return false;
                        }
                        continue;
                    }
                }
                Some(b'"') => {
                    if !self.string() {
                        return false;
                    }
                }
                Some(b't') => {
                    if !self.word(b"true") {
                        return false;
                    }
                }
                Some(b'f') => {
                    if !self.word(b"false") {
                        return false;
                    }
                }
                Some(b'n') => {
                    if !self.word(b"null") {
                        return false;
                    }
                }
                _ => {
                    if !self.number() {
                        return false;
                    }
                }
            }
            // After a value: close containers or go on with the next element.
            loop {
                if depth == 0 {
                    return true;
                }
                let close = stack[depth - 1];
                if self.eat(b',') {
                    if close == b'}' && !(self.string() && self.eat(b':')) {
                        return false;
                    }
                    break;
                }
                if self.eat(close) {
                    depth -= 1;
                    continue;
                }
                return false;
            }
        }
    }

    fn word(&mut self, w: &[u8]) -> bool {
        if self.s[self.i..].starts_with(w) {
            self.i += w.len();
            true
        } else {
            false
        }
    }

    fn string(&mut self) -> bool {
        self.ws();
        if self.peek() != Some(b'"') {
            return false;
        }
        self.i += 1;
        let start = self.i;
        loop {
            match self.peek() {
                None => return false,
                Some(b'"') => {
                    self.i += 1;
                    return std::str::from_utf8(&self.s[start..self.i - 1]).is_ok();
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            let hex = self.s.get(self.i + 1..self.i + 5);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return false;
                            }
                            self.i += 5;
                        }
                        _ => return false,
                    }
                }
                Some(c) if c < 0x20 => return false,
                Some(_) => self.i += 1,
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> bool {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return false,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return false;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn valid_and_invalid_json() {
        for ok in [
            "null",
            " {} ",
            "[]",
            r##"{"user":{"name":"ann","color":"#f00"},"cursor":[1,2.5e3,-0,true,false,null]}"##,
            r#""a\"b\u00e9""#,
            "[[],[{}]]",
        ] {
            assert!(is_json(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\"}",
            "{\"a\":1,}",
            "01",
            "1.",
            "tru",
            "[1 2]",
            "\"\n\"",
            "{} {}",
            "\u{0}",
            "[\"\\x\"]",
        ] {
            assert!(!is_json(bad.as_bytes()), "{bad:?}");
        }
        assert!(!is_json(&[b'"', 0xff, b'"']));
        let deep = "[".repeat(64) + &"]".repeat(64);
        assert!(is_json(deep.as_bytes()));
        let deeper = "[".repeat(65) + &"]".repeat(65);
        assert!(!is_json(deeper.as_bytes()));
        let huge = "[".repeat(1_000_000);
        assert!(!is_json(huge.as_bytes()));
    }
}
