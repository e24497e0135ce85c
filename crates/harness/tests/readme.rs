//! The README's headline block is the generated docs/headline.md, verbatim,
//! so its figures are those of the committed run.

#[test]
fn readme_headline_matches_committed_results() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let headline = std::fs::read_to_string(format!("{root}/docs/headline.md")).unwrap();
    let start = readme.find("<!-- headline:start").expect("README has a headline:start marker");
    let start = start + readme[start..].find("-->").unwrap() + 3;
    let end = readme.find("<!-- headline:end -->").expect("README has a headline:end marker");
    assert_eq!(
        readme[start..end].trim(),
        headline.trim(),
        "README's headline block differs from docs/headline.md: copy it over (or run `attn report`)"
    );
}
