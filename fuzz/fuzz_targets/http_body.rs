//! The JSON body of a `dnd serve` request (the first byte picks the route), through the parsing and
//! checks the server runs before queueing anything.
#![no_main]

const ROUTES: [&str; 3] = ["/v1/completions", "/v1/chat/completions", "/v1/adapters"];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else { return };
    let limits = dnd_serve::Limits::default();
    let _ = dnd_serve::check_body(ROUTES[kind as usize % 3], body, &limits);
});
