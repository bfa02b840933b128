//! `storefront` (weight 1): a shopper opening the shop page in a browser. `GET /` with a
//! browser's `Accept` (the gateway answers the page, not its JSON service info), then every file
//! the page references (`/storefront/…` in `src` and `href`) and every module those scripts
//! import, each once, as a first visit with an empty cache fetches them.

use std::collections::BTreeSet;
use std::sync::Arc;

use goose::goose::GooseResponse;
use goose::prelude::*;

use super::{Context, Outcome, step, verdict};

const NAME: &str = "storefront";

/// What a browser sends when it navigates to a page.
pub const BROWSER_ACCEPT: &str =
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";

/// Files fetched per visit at most (the page references about a dozen).
const MAX_FILES: usize = 64;

pub fn scenario(ctx: &Arc<Context>) -> Result<Scenario, GooseError> {
    let scenario = scenario!(NAME)
        .set_weight(1)?
        .set_wait_time(ctx.think_time.0, ctx.think_time.1)?
        .register_transaction(step!(ctx, "storefront: open the shop page", open_page));
    Ok(scenario)
}

/// The `/storefront/<file>` paths `text` names: `"/storefront/x"` attributes in the page, and
/// `from './x.js'` imports in a module (which a browser resolves against `/storefront/`).
pub fn referenced_files(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (quote, prefix) in [("\"", "/storefront/"), ("'", "./")] {
        let marker = format!("{quote}{prefix}");
        for piece in text.split(marker.as_str()).skip(1) {
            let name: String = piece
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                .collect();
            let closed = piece[name.len()..].starts_with(quote);
            if closed && !name.is_empty() && !name.starts_with('.') {
                found.push(format!("/storefront/{name}"));
            }
        }
    }
    found
}

async fn open_page(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let (page, html) = fetch(user, &ctx, "/", "/", Some(BROWSER_ACCEPT)).await?;
    if !page.ok {
        return verdict(Some(page.metric));
    }
    let mut queue: Vec<String> = referenced_files(&html);
    let mut seen = BTreeSet::new();
    let mut failed = None;
    while let Some(path) = queue.pop() {
        if seen.len() >= MAX_FILES || !seen.insert(path.clone()) {
            continue;
        }
        let (outcome, body) = fetch(user, &ctx, &path, "/storefront/{file}", None).await?;
        if !outcome.ok {
            failed.get_or_insert(outcome.metric);
            continue;
        }
        if path.ends_with(".js") {
            queue.extend(referenced_files(&body));
        }
    }
    verdict(failed)
}

/// One GET named `name`, with `accept` when given; its outcome and body text.
async fn fetch(
    user: &mut GooseUser,
    ctx: &Context,
    path: &str,
    name: &str,
    accept: Option<&str>,
) -> Result<(Outcome, String), Box<TransactionError>> {
    let mut builder = user.get_request_builder(&GooseMethod::Get, path)?;
    if let Some(accept) = accept {
        builder = builder.header("accept", accept);
    }
    let request = GooseRequest::builder()
        .method(GooseMethod::Get)
        .path(path)
        .name(name)
        .set_request_builder(builder)
        .build();
    let GooseResponse { request, response } = user.request(request).await?;
    let body = match response {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    ctx.live.record(NAME, request.success);
    Ok((
        Outcome {
            ok: request.success,
            status: request.status_code,
            metric: request,
        },
        body,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_found_in_the_page_and_in_module_imports() {
        let page = r#"<link rel="stylesheet" href="/storefront/style.css"><script type="module" src="/storefront/app.js"></script><a href="/docs">"#;
        assert_eq!(
            referenced_files(page),
            vec!["/storefront/style.css", "/storefront/app.js"]
        );
        let module = "import { Action } from './trace.js';\nimport { api } from './api.js';\nconst x = './not a file';";
        assert_eq!(
            referenced_files(module),
            vec!["/storefront/trace.js", "/storefront/api.js"]
        );
    }
}
