//! Patches of every type the API server takes (JSON merge, strategic merge, JSON patch,
//! apply) applied to stored objects through `router()` in process, and `moat-patch`'s
//! strategic merge on arbitrary (original, patch) pairs: no panic, and an answer that is a
//! success or a `Status`, never a 5xx.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use moat_fuzz::{COLLECTIONS, api, call, runtime, seed_object};

const PATCH_TYPES: &[&str] = &[
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/json-patch+json",
    "application/apply-patch+yaml",
];
const SUBRESOURCES: &[&str] = &["", "/status", "/scale"];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, patch)) = data.split_first() else {
        return;
    };
    let (path, kind) = COLLECTIONS[usize::from(sel & 0x07) % COLLECTIONS.len()];
    let ct = PATCH_TYPES[usize::from((sel >> 3) & 0x03)];
    let sub = SUBRESOURCES[usize::from(sel >> 5) % SUBRESOURCES.len()];
    runtime().block_on(async {
        let app = api().await;
        let seed = seed_object(kind).to_string().into_bytes();
        call(&app, Method::POST, path, "application/json", seed).await;
        let uri = format!("{path}/seed{sub}?fieldManager=fuzz");
        call(&app, Method::PATCH, &uri, ct, patch.to_vec()).await;
        call(&app, Method::GET, &format!("{path}/seed"), "", Vec::new()).await;
    });
    // The strategic merge itself: the input is "original \0 patch", both JSON.
    let mut halves = patch.splitn(2, |b| *b == 0);
    let (Some(a), Some(b)) = (halves.next(), halves.next()) else {
        return;
    };
    let (Ok(original), Ok(p)) = (
        serde_json::from_slice::<serde_json::Value>(a),
        serde_json::from_slice::<serde_json::Value>(b),
    ) else {
        return;
    };
    for (_, kind) in COLLECTIONS {
        let _ = moat_patch::strategic_merge(kind, &original, &p);
    }
});
