struct Repo;

impl Repo {
    #[herdless::memoized(ttl_secs = 60)]
    fn user(&self, id: u64) -> String {
        id.to_string()
    }
}

fn main() {}
