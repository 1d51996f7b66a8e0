"""The regulator's side of the sandbox: API tokens, the /sandbox/v1 API and its views."""
