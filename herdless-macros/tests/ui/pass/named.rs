mod users {
    #[herdless::memoized(ttl_secs = 60, name = "users::by_id")]
    pub fn by_id(id: u64) -> String {
        format!("user {id}")
    }

    #[herdless::memoized(ttl_secs = 60)]
    pub(crate) fn default_name(id: u64) -> String {
        format!("user {id}")
    }
}

fn main() {
    assert_eq!(users::by_id(3), "user 3");
    assert_eq!(users::by_id_memoized().name(), "users::by_id");
    assert_eq!(users::default_name(3), "user 3");
    assert_eq!(
        users::default_name_memoized().name(),
        concat!(module_path!(), "::users::default_name")
    );
}
