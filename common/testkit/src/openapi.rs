//! Checks on the OpenAPI documents the services serve.

/// Checks that every id pattern in an OpenAPI document (a `pattern` over the id alphabet) is
/// [`shopstack_base::ids::ID_PATTERN`] with its length bounds, and returns how many there are: utoipa takes
/// only literals, so this is what keeps the services' copies from drifting.
pub fn assert_id_patterns(doc: &serde_json::Value) -> usize {
    fn walk(value: &serde_json::Value, at: &str, found: &mut usize) {
        match value {
            serde_json::Value::Object(members) => {
                if let Some(pattern) = members.get("pattern").and_then(|p| p.as_str())
                    && pattern.contains("@:")
                {
                    assert_eq!(pattern, shopstack_base::ids::ID_PATTERN, "id pattern at {at}");
                    assert_eq!(members.get("minLength"), Some(&1.into()), "minLength at {at}");
                    let max = shopstack_base::ids::MAX_ID_LEN;
                    assert_eq!(members.get("maxLength"), Some(&max.into()), "maxLength at {at}");
                    *found += 1;
                }
                for (key, member) in members {
                    walk(member, &format!("{at}/{key}"), found);
                }
            }
            serde_json::Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    walk(item, &format!("{at}/{index}"), found);
                }
            }
            _ => {}
        }
    }
    let mut found = 0;
    walk(doc, "#", &mut found);
    found
}
