//! OVSDB sends JSON values back to back with no delimiter: this splits a
//! byte stream into complete values, keeping an incomplete tail for the
//! next read (serde_json's stream deserializer tells the two apart).

use serde_json::Value;

/// Bytes received, not yet parsed into a complete value.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
}

/// More than any single message should be: a peer that sends an endless
/// value is cut off instead of growing the buffer forever.
const MAX_PENDING: usize = 512 * 1024 * 1024;

impl Framer {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Every complete value received so far, in order. An error means the
    /// stream is not JSON (or a value is absurdly large): the connection
    /// must be dropped.
    pub fn drain(&mut self) -> Result<Vec<Value>, serde_json::Error> {
        let mut values = Vec::new();
        let mut stream = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
        let consumed = loop {
            let offset = stream.byte_offset();
            match stream.next() {
                Some(Ok(value)) => values.push(value),
                None => break offset,
                // An incomplete value at the end: wait for more bytes.
                Some(Err(err)) if err.is_eof() => break offset,
                Some(Err(err)) => return Err(err),
            }
        };
        self.buf.drain(..consumed);
        if self.buf.len() > MAX_PENDING {
            return Err(serde::de::Error::custom("a JSON value over 512 MiB"));
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn concatenated_values_come_out_in_order() {
        let mut framer = Framer::default();
        framer
            .push(br#"{"id":1,"result":[]} {"id":null,"method":"update3","params":[1,"x",{}]}[1]"#);
        let values = framer.drain().unwrap();
        assert_eq!(values.len(), 3);
        assert_eq!(values[0]["id"], 1);
        assert_eq!(values[1]["method"], "update3");
        assert_eq!(values[2], json!([1]));
    }

    #[test]
    fn a_value_split_across_reads_waits_for_its_end() {
        let text = br#"{"id":7,"result":{"Port_Binding":{"u":{"initial":{"mac":"fa:16:3e:00:00:01 10.0.0.5"}}}}}"#;
        for cut in 1..text.len() {
            let mut framer = Framer::default();
            framer.push(&text[..cut]);
            assert!(framer.drain().unwrap().is_empty(), "cut at {cut}");
            framer.push(&text[cut..]);
            let values = framer.drain().unwrap();
            assert_eq!(values.len(), 1, "cut at {cut}");
            assert_eq!(values[0]["id"], 7);
        }
    }

    #[test]
    fn strings_with_braces_and_escapes_do_not_confuse_it() {
        let mut framer = Framer::default();
        framer.push(br#"{"a":"}{\"[","b":"\\"}{"c":1}"#);
        let values = framer.drain().unwrap();
        assert_eq!(values, [json!({"a": "}{\"[", "b": "\\"}), json!({"c": 1})]);
    }

    #[test]
    fn malformed_json_is_an_error() {
        let mut framer = Framer::default();
        framer.push(br#"{"id":1} {"id":,}"#);
        assert!(framer.drain().is_err());
        let mut framer = Framer::default();
        framer.push(b"]");
        assert!(framer.drain().is_err());
    }
}
