//! `#[herdless::memoized(...)]`'s argument parser and expansion, on arbitrary text: an error
//! (a `compile_error!`), never a panic inside the macro. The input is `<args>\n<fn item>`; an
//! item that does not parse is replaced by a plain one, so the arguments are always checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The macro crate's own modules (it is a proc-macro crate: nothing else can link it).
#[path = "../../herdless-macros/src/args.rs"]
#[allow(dead_code)]
mod args;
#[path = "../../herdless-macros/src/expand.rs"]
#[allow(dead_code)]
mod expand;
#[path = "../../herdless-macros/src/types.rs"]
#[allow(dead_code)]
mod types;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (attr, item) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(args) = syn::parse_str::<args::Args>(attr) else {
        return;
    };
    let item = syn::parse_str::<syn::ItemFn>(item).unwrap_or_else(|_| {
        syn::parse_quote!(
            fn f(n: u64) -> u64 {
                n
            }
        )
    });
    let _ = expand::expand(args, item);
});
