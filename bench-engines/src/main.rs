//! LMDB (heed), redb (`ConcurrencyMode::MultiWriter`) and SQLite (WAL) measured alike: the
//! engines the disk store could be built on (issue 20, "the storage engine, chosen by
//! measurement").
//!
//! Each engine gets a fresh file with 10 000 records of 1 KiB under 24-byte keys (the shape of
//! herdless's record keys), then:
//! - `get`: a read transaction and a get of one record, its bytes looked at in place (what the
//!   disk store's hit does before decoding), median of 9 batches;
//! - `write`: one transaction replacing one record and committing, per write (median, p99);
//! - `second process`: the same file opened by a child process while this one holds it open,
//!   which must read the record (the disk store's case: processes share one file).
//!
//! Run: `cargo run --release --manifest-path bench-engines/Cargo.toml`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

const RECORDS: u64 = 10_000;
const VALUE: usize = 1024;
const GET_BATCH: u64 = 200_000;
const WRITES: usize = 2_000;

fn key(i: u64) -> [u8; 24] {
    // Spread like hashes: the B-tree sees random keys.
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&0x1234_5678u64.to_be_bytes());
    k[8..16].copy_from_slice(&h.to_be_bytes());
    k[16..].copy_from_slice(&i.to_be_bytes());
    k
}

/// Nanoseconds per get: the median of 9 batches.
fn per_get(mut one: impl FnMut(u64) -> usize) -> f64 {
    let mut batches: Vec<f64> = (0..9)
        .map(|_| {
            let t = Instant::now();
            let mut sum = 0usize;
            for i in 0..GET_BATCH {
                sum += one(black_box(i % 64) * 97 % RECORDS);
            }
            black_box(sum);
            t.elapsed().as_nanos() as f64 / GET_BATCH as f64
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    batches[4]
}

/// Median and p99 of one write each, in microseconds.
fn per_write(mut one: impl FnMut(u64)) -> (f64, f64) {
    let mut us: Vec<f64> = (0..WRITES as u64)
        .map(|i| {
            let t = Instant::now();
            one(i * 31 % RECORDS);
            t.elapsed().as_nanos() as f64 / 1000.0
        })
        .collect();
    us.sort_by(f64::total_cmp);
    (us[WRITES / 2], us[WRITES * 99 / 100])
}

fn fresh(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("herdless-engines-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    d
}

/// Runs this binary as a child that opens `path` with `engine` and reads record 7.
fn second_process(engine: &str, path: &Path) -> String {
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["--child", engine, &path.display().to_string()])
        .output()
        .expect("child");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && text == "ok" {
        "reads the file".into()
    } else {
        format!(
            "fails: {} {}",
            text,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("")
        )
    }
}

mod lmdb {
    use super::*;
    use heed::types::Bytes;
    use heed::{Database, Env, EnvFlags, EnvOpenOptions};

    pub fn open(dir: &Path) -> (Env, Database<Bytes, Bytes>) {
        let mut o = EnvOpenOptions::new();
        o.map_size(256 << 20).max_dbs(2);
        // SAFETY: the flags the disk store uses; every process goes through LMDB.
        unsafe { o.flags(EnvFlags::NO_READ_AHEAD | EnvFlags::NO_SYNC | EnvFlags::NO_META_SYNC) };
        // SAFETY: as above.
        let env = unsafe { o.open(dir) }.expect("open");
        let mut w = env.write_txn().expect("txn");
        let db = env.create_database(&mut w, Some("r")).expect("db");
        w.commit().expect("commit");
        (env, db)
    }

    pub fn run() {
        let dir = fresh("lmdb");
        let (env, db) = open(&dir);
        let v = vec![7u8; VALUE];
        let mut w = env.write_txn().unwrap();
        for i in 0..RECORDS {
            db.put(&mut w, &key(i), &v).unwrap();
        }
        w.commit().unwrap();
        let get = per_get(|i| {
            let r = env.read_txn().unwrap();
            db.get(&r, &key(i)).unwrap().map_or(0, |b| b[0] as usize)
        });
        let (w50, w99) = per_write(|i| {
            let mut w = env.write_txn().unwrap();
            db.put(&mut w, &key(i), &v).unwrap();
            w.commit().unwrap();
        });
        let second = second_process("lmdb", &dir);
        report("LMDB (heed 0.22, NO_SYNC)", get, w50, w99, &second);
        let _ = std::fs::remove_dir_all(&dir);
    }

    pub fn child(dir: &Path) -> bool {
        let (env, db) = open(dir);
        let r = env.read_txn().unwrap();
        db.get(&r, &key(7))
            .unwrap()
            .is_some_and(|b| b.len() == VALUE)
    }
}

mod redb_engine {
    use super::*;
    use redb::{ConcurrencyMode, Database, Durability, ReadableDatabase, TableDefinition};

    const T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("r");

    pub fn open(file: &Path) -> Result<Database, redb::DatabaseError> {
        redb::Builder::new()
            .set_concurrency_mode(ConcurrencyMode::MultiWriter)
            .create(file)
    }

    pub fn run(durability: Durability, label: &str) {
        let dir = fresh("redb");
        let file = dir.join("r.redb");
        let db = open(&file).expect("open");
        let v = vec![7u8; VALUE];
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(T).unwrap();
            for i in 0..RECORDS {
                t.insert(&key(i)[..], &v[..]).unwrap();
            }
        }
        w.commit().unwrap();
        let get = per_get(|i| {
            let r = db.begin_read().unwrap();
            let t = r.open_table(T).unwrap();
            let k = key(i);
            t.get(&k[..]).unwrap().map_or(0, |g| g.value()[0] as usize)
        });
        let (w50, w99) = per_write(|i| {
            let mut w = db.begin_write().unwrap();
            let _ = w.set_durability(durability);
            {
                let mut t = w.open_table(T).unwrap();
                t.insert(&key(i)[..], &v[..]).unwrap();
            }
            w.commit().unwrap();
        });
        let second = second_process("redb", &file);
        report(label, get, w50, w99, &second);
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }

    pub fn child(file: &Path) -> bool {
        let Ok(db) = open(file) else { return false };
        let r = db.begin_read().unwrap();
        let t = r.open_table(T).unwrap();
        let k = key(7);
        let found = t
            .get(&k[..])
            .unwrap()
            .is_some_and(|g| g.value().len() == VALUE);
        found
    }
}

mod sqlite {
    use super::*;
    use rusqlite::{params, Connection, OptionalExtension};

    pub fn open(file: &Path, synchronous: &str) -> Connection {
        let c = Connection::open(file).expect("open");
        c.pragma_update(None, "journal_mode", "wal").unwrap();
        c.pragma_update(None, "synchronous", synchronous).unwrap();
        c.execute(
            "CREATE TABLE IF NOT EXISTS r (k BLOB PRIMARY KEY, v BLOB NOT NULL)",
            [],
        )
        .unwrap();
        c
    }

    pub fn run(synchronous: &str, label: &str) {
        let dir = fresh("sqlite");
        let file = dir.join("r.db");
        let mut c = open(&file, synchronous);
        let v = vec![7u8; VALUE];
        let tx = c.transaction().unwrap();
        for i in 0..RECORDS {
            tx.execute(
                "INSERT OR REPLACE INTO r (k, v) VALUES (?1, ?2)",
                params![&key(i)[..], &v],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        let get = {
            let mut s = c.prepare_cached("SELECT v FROM r WHERE k = ?1").unwrap();
            per_get(|i| {
                s.query_row(params![&key(i)[..]], |row| {
                    let b = row.get_ref(0)?.as_blob()?;
                    Ok(b[0] as usize)
                })
                .optional()
                .unwrap()
                .unwrap_or(0)
            })
        };
        let (w50, w99) = per_write(|i| {
            c.execute(
                "INSERT OR REPLACE INTO r (k, v) VALUES (?1, ?2)",
                params![&key(i)[..], &v],
            )
            .unwrap();
        });
        let second = second_process("sqlite", &file);
        report(label, get, w50, w99, &second);
        drop(c);
        let _ = std::fs::remove_dir_all(&dir);
    }

    pub fn child(file: &Path) -> bool {
        let c = open(file, "normal");
        c.query_row(
            "SELECT length(v) FROM r WHERE k = ?1",
            params![&key(7)[..]],
            |r| r.get::<_, i64>(0),
        )
        .is_ok_and(|n| n as usize == VALUE)
    }
}

fn report(engine: &str, get_ns: f64, w50: f64, w99: f64, second: &str) {
    println!("| {engine} | {get_ns:.0} | {w50:.1} | {w99:.1} | {second} |");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let path = PathBuf::from(&args[3]);
        let ok = match args[2].as_str() {
            "lmdb" => lmdb::child(&path),
            "redb" => redb_engine::child(&path),
            "sqlite" => sqlite::child(&path),
            _ => false,
        };
        println!("{}", if ok { "ok" } else { "not found" });
        return;
    }
    println!("| engine | get ns (txn + get) | write µs median | write µs p99 | a second process |");
    println!("|---|---|---|---|---|");
    lmdb::run();
    redb_engine::run(
        redb::Durability::None,
        "redb 4.6 MultiWriter, Durability::None",
    );
    redb_engine::run(
        redb::Durability::Immediate,
        "redb 4.6 MultiWriter, Durability::Immediate",
    );
    sqlite::run(
        "normal",
        "SQLite WAL, synchronous=NORMAL (DiskCache's setting)",
    );
    sqlite::run("off", "SQLite WAL, synchronous=OFF");
}
