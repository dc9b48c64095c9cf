//! Loads the full public LiteLLM catalog when `$QUOTAFLOW_FULL_CATALOG` names it; skipped (with a
//! printed note) otherwise, since the project ships only the small fixture.

use pricing::{Catalog, PriceOutcome, PricingInput};

#[test]
fn full_catalog_loads_every_row() {
    let Some(path) = std::env::var_os("QUOTAFLOW_FULL_CATALOG") else {
        println!("note: QUOTAFLOW_FULL_CATALOG is not set; skipping the full-catalog load test");
        return;
    };
    let catalog = Catalog::load_path(&path, None).expect("the full catalog loads");
    let report = catalog.load_report();
    println!(
        "full catalog {:?}: version {}, {} rows, {} loaded, {} skipped ({:?}), {} field errors",
        path,
        catalog.version(),
        report.rows_total,
        report.rows_loaded,
        report.skipped.len(),
        report
            .skipped
            .iter()
            .map(|row| &row.name)
            .collect::<Vec<_>>(),
        report.field_errors.len(),
    );
    for error in &report.field_errors {
        println!("  field error: {error}");
    }
    assert_eq!(report.rows_loaded + report.skipped.len(), report.rows_total);
    assert_eq!(catalog.len(), report.rows_loaded);
    if path.to_string_lossy().contains("1.110.2") {
        assert_eq!(report.rows_total, 4_878);
        assert_eq!(report.rows_loaded, 4_877);
        assert!(report.field_errors.is_empty());
    }
    // Every loaded text row with an input price prices a small call.
    let mut priced = 0;
    for entry in catalog
        .models()
        .filter(|entry| entry.price("input_cost_per_token").is_some())
    {
        let usage = PricingInput {
            model: entry.name.clone(),
            modality: "text".to_owned(),
            input_tokens: 1_000,
            ..PricingInput::default()
        };
        match catalog.price(&usage) {
            PriceOutcome::Priced { cost_usd, .. } => {
                assert!(cost_usd >= rust_decimal::Decimal::ZERO)
            }
            PriceOutcome::Unpriced { reason } => panic!("{}: {reason}", entry.name),
        }
        priced += 1;
    }
    println!("priced 1 000 input tokens on {priced} rows");
}
