//! The consumers' event decoder on arbitrary bytes: it may refuse them, never panic. Whatever it
//! accepts re-encodes and decodes to the same event.
#![no_main]

use libertum_domain::{asset, token};
use libertum_events::{ASSETS_SOURCE, CloudEvent, TOKENS_SOURCE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    for (source, family) in [(TOKENS_SOURCE, "token"), (ASSETS_SOURCE, "asset")] {
        let Ok(event) = CloudEvent::decode(bytes, source, family) else {
            continue;
        };
        let _ = event.sequence();
        match family {
            "token" => {
                let _ = event.data::<token::Event>();
            }
            _ => {
                let _ = event.data::<asset::Event>();
            }
        }
        let again = CloudEvent::decode(&event.to_bytes(), source, family)
            .expect("an accepted event decodes again after encoding");
        assert_eq!(again.id, event.id);
        assert_eq!(again.subject, event.subject);
        assert_eq!(again.data.get(), event.data.get());
    }
});
