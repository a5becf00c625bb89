//! Rebuilds the crate when a migration is added or changed: the migrations are embedded in the
//! binary by `diesel_migrations::embed_migrations!`, which cargo does not track by itself.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
