//! Request bodies as the API server decodes them, through `router()` in process: JSON and
//! protobuf creates and updates, and YAML server-side apply, for several kinds. Whatever the
//! bytes, the server must answer (no panic) with a success or a `Status`, never a 5xx.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use moat_fuzz::{COLLECTIONS, api, call, runtime, seed_object};

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/vnd.kubernetes.protobuf",
    "application/yaml",
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let (path, kind) = COLLECTIONS[usize::from(sel & 0x07) % COLLECTIONS.len()];
    let ct = CONTENT_TYPES[usize::from((sel >> 3) & 0x03) % CONTENT_TYPES.len()];
    let verb = sel >> 5;
    runtime().block_on(async {
        let app = api().await;
        match verb {
            // Create.
            0..=2 => {
                call(&app, Method::POST, path, ct, body.to_vec()).await;
            }
            // Update of an existing object.
            3..=4 => {
                let seed = seed_object(kind).to_string().into_bytes();
                call(&app, Method::POST, path, "application/json", seed).await;
                call(
                    &app,
                    Method::PUT,
                    &format!("{path}/seed"),
                    ct,
                    body.to_vec(),
                )
                .await;
            }
            // Server-side apply (YAML or JSON), creating or updating.
            _ => {
                if verb == 7 {
                    let seed = seed_object(kind).to_string().into_bytes();
                    call(&app, Method::POST, path, "application/json", seed).await;
                }
                call(
                    &app,
                    Method::PATCH,
                    &format!("{path}/seed?fieldManager=fuzz&force=true"),
                    "application/apply-patch+yaml",
                    body.to_vec(),
                )
                .await;
            }
        }
        // Whatever was stored must read back.
        call(&app, Method::GET, path, "", Vec::new()).await;
    });
    // The decoders on their own, for what the routes above reach only after a kind check.
    let _ = moat_apiserver::protobuf::to_json(body);
});
