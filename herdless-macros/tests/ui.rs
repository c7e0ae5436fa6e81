//! Compile-time behaviour of `#[herdless::memoized]`: what compiles (and runs), and the errors
//! for what does not. Refresh the `.stderr` snapshots with `TRYBUILD=overwrite`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
