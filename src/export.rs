//! `export --reviewed VERDICT`: reviewed runs as chat-format JSON Lines, one run a line:
//! `{"messages": [the messages sent, then the accepted code as the assistant's reply]}`,
//! for fine-tuning a local model on the project's own accepted work. Only successful runs
//! keep their exchange in the ledger, so only they are exported.

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::ledger::Ledger;
use crate::review::Verdict;

/// The JSON Lines of the runs whose current verdict is `verdict`, oldest first.
pub fn export(
    env: &dyn Fn(&str) -> Option<String>,
    verdict: Verdict,
    since: Option<&str>,
) -> Result<Vec<String>> {
    let since = since.map(crate::stats::check_since).transpose()?;
    let mut ledger = Ledger::open_default(env)?;
    let exchanges = ledger.exchanges(verdict.as_str(), since.as_deref())?;
    exchanges
        .into_iter()
        .map(|exchange| {
            let mut messages: Vec<Value> =
                serde_json::from_str(&exchange.messages).map_err(|error| Error::Ledger {
                    path: ledger.path().to_path_buf(),
                    message: format!("the messages of run {}: {error}", exchange.run_id),
                })?;
            messages.push(json!({"role": "assistant", "content": exchange.reply}));
            Ok(json!({ "messages": messages }).to_string())
        })
        .collect()
}
