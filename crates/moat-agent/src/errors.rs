//! Errors as users read them: an error and its `source()` chain on one line, for events,
//! waiting messages and the shim's `error ...` answer. A leaf module, so the shim (which
//! `runtime` and `node` use) can render its errors without importing either.

/// An error with its causes, on one line: "step: cause: root cause".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("creating the sandbox")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_names_step_and_cause() {
        let e = Outer(std::io::Error::other("no space left"));
        assert_eq!(super::chain(&e), "creating the sandbox: no space left");
    }
}
