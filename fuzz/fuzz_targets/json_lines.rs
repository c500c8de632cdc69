//! SageMaker JSON Lines bodies: any bytes give at most one record per line, inline photos that
//! together take no more bytes than the body, or a clean error naming the line.
#![no_main]

use bestiary_protocol::ProtocolError;
use bestiary_protocol::json_lines::{Record, parse_json_lines};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    match parse_json_lines(bytes) {
        Ok(records) => {
            let text = std::str::from_utf8(bytes).expect("only UTF-8 parses");
            assert!(records.len() <= text.lines().count());
            let mut inline = 0;
            for record in &records {
                if let Record::Inline { name, bytes } = record {
                    assert!(name.starts_with("line "), "{name}");
                    inline += bytes.len();
                }
            }
            assert!(inline <= bytes.len());
        }
        Err(ProtocolError::BadRequest(message)) => {
            assert!(
                message.starts_with("line ") || message == "JSON Lines must be UTF-8",
                "{message}"
            );
        }
        Err(other) => panic!("a JSON Lines body is never {other:?}"),
    }
});
