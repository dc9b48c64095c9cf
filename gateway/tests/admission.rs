//! [`Admission`]: the policies' request-time rules apply to the requests their selector matches,
//! name the policy, the rule and its limit, and add the policy's hint.

use gateway::{Admission, RequestAttributes};
use policy::admission::Declared;
use policy::PolicySet;
use schemas::ImageTier;

const POLICIES: &str = r#"
- id: summaries-context
  owner: {team: ml, contact: ml@example.com}
  description: the summaries workflow's approved context size and output
  unit: cost_usd
  selector: {workflow: summaries}
  window: {kind: day}
  hard_cap: 100
  action: {kind: block}
  admission:
    max_input_tokens: 32000
    max_output_tokens: 4096
    hint: "use the summaries-lite workflow or ask #ml-platform for a raise"
- id: preview-images
  owner: {team: design, contact: d@example.com}
  description: previews never run on a final-quality route
  environment: prod
  unit: cost_usd
  selector: {workflow: image-preview, modality: image}
  window: {kind: day}
  hard_cap: 50
  action: {kind: block}
  admission:
    image_tiers: [draft, preview]
"#;

fn request<'a>(workflow: &'a str, modality: &'a str) -> RequestAttributes<'a> {
    RequestAttributes {
        api_key_id: "k1",
        team: "ml",
        workflow,
        environment: "prod",
        modality,
        model: "gpt-4o",
        ..Default::default()
    }
}

#[test]
fn rules_refuse_only_matching_requests_that_declare_too_much() {
    let admission = Admission::new(&PolicySet::from_str("p.yaml", POLICIES).unwrap());
    let big = Declared {
        input_tokens: Some(50_000),
        ..Declared::default()
    };
    let refusal = admission
        .check(&request("summaries", "text"), &big)
        .expect("refused");
    assert_eq!(&*refusal.policy_id, "summaries-context");
    assert_eq!(refusal.refusal.rule, "max_input_tokens");
    assert_eq!(
        refusal.reason(),
        "policy summaries-context refuses this request before it is sent: max_input_tokens \
         asked for 50000, over the limit of 32000. use the summaries-lite workflow or ask \
         #ml-platform for a raise"
    );
    // Another workflow: the rule is not its.
    assert_eq!(admission.check(&request("chat", "text"), &big), None);
    // Within the limits, or declaring nothing: admitted.
    let fits = Declared {
        input_tokens: Some(32_000),
        max_output_tokens: Some(1_000),
        ..Declared::default()
    };
    assert_eq!(admission.check(&request("summaries", "text"), &fits), None);
    assert_eq!(
        admission.check(&request("summaries", "text"), &Declared::default()),
        None
    );

    let final_image = Declared {
        image_tier: Some(ImageTier::Final),
        ..Declared::default()
    };
    let refusal = admission
        .check(&request("image-preview", "image"), &final_image)
        .expect("a final-tier image from the preview workflow is refused");
    assert_eq!(refusal.refusal.rule, "image_tiers");
    let draft = Declared {
        image_tier: Some(ImageTier::Draft),
        ..Declared::default()
    };
    assert_eq!(
        admission.check(&request("image-preview", "image"), &draft),
        None
    );
    // The policy counts prod only: staging's previews are not its business.
    let staging = RequestAttributes {
        environment: "staging",
        ..request("image-preview", "image")
    };
    assert_eq!(admission.check(&staging, &final_image), None);
}

/// Issue 15 point 3, in process: an embedding gateway checks `admission.estimated_cost` with
/// [`gateway::Scopes`] (here fed by hand; `Scopes::follow` reads the totals topic) and the price
/// catalog: a request whose declared maximum exceeds what its scope has left is refused naming
/// the estimate, the headroom and the scope; a smaller one, a shadow policy's, or one that
/// declares nothing is not.
#[test]
fn the_estimated_cost_rule_compares_the_declared_maximum_with_what_is_left() {
    let text = r#"
- id: key-daily
  owner: {team: ml, contact: ml@example.com}
  description: 10 USD per key and day
  unit: cost_usd
  group_by: [api_key_id]
  window: {kind: day}
  hard_cap: 10
  action: {kind: block}
  admission: {estimated_cost: true}
"#;
    let policies = PolicySet::from_str("p.yaml", text).unwrap();
    let policy = policies.get("key-daily").unwrap();
    let scopes = gateway::Scopes::new(&policies);
    let now = chrono::Utc::now();
    let today = now.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    scopes.apply(schemas::WindowTotal {
        cost_usd: "9.9".parse().unwrap(),
        version: 1,
        ..schemas::fixtures::empty_day_total(&policy.totals_scope_kind(), "api_key_id=k1", today)
    });
    let catalog = pricing::Catalog::load_path(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/catalog.json"),
        None,
    )
    .unwrap();
    let estimating = [("key-daily".to_owned(), None)].into();
    let decisions = std::sync::RwLock::new(gateway::DecisionView::new());
    let gpt4o = RequestAttributes {
        api_key_id: "k1",
        provider: "openai",
        model: "gpt-4o",
        endpoint: "chat_completions",
        modality: "text",
        ..Default::default()
    };
    let declared = |input: u64, output: u64| Declared {
        input_tokens: Some(input),
        max_output_tokens: Some(output),
        ..Declared::default()
    };
    let check = |declared: Declared| {
        scopes.estimated_cost_refusal(&gpt4o, &declared, &estimating, &catalog, &decisions, now)
    };
    // 10k in + 500 out at 2.5 and 10 USD per million: 0.03 USD, under the 0.1 left.
    assert!(check(declared(10_000, 500)).is_none());
    // 50k in + 1k out: 0.135 USD.
    let (quota, refusal) = check(declared(50_000, 1_000)).expect("refused");
    assert_eq!(quota.scope, "api_key_id=k1");
    assert_eq!(quota.remaining, "0.1".parse().unwrap());
    assert_eq!(
        refusal.to_string(),
        "estimated_cost asked for up to 0.135 USD, over the limit of 0.1 USD left"
    );
    assert!(check(Declared::default()).is_none(), "nothing declared");
    let unknown = RequestAttributes {
        model: "no-such-model",
        ..gpt4o
    };
    assert!(scopes
        .estimated_cost_refusal(
            &unknown,
            &declared(50_000, 1_000),
            &estimating,
            &catalog,
            &decisions,
            now
        )
        .is_none());
    // The tightest quota, as the RateLimit headers say it.
    let tightest = scopes.tightest(&gpt4o, &decisions, now).unwrap();
    assert_eq!(tightest.remaining, "0.1".parse().unwrap());
}
