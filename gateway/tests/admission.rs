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
