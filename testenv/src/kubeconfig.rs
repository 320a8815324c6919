//! The admin kubeconfig and the CA that kube-apiserver self-signs.

use std::path::Path;

/// Renders a kubeconfig for `server` that trusts the CA in `ca_file` and authenticates with a
/// static bearer token (listed in kube-apiserver's --token-auth-file as a system:masters user).
///
/// The CA is referenced by absolute path rather than inlined so no base64 is needed; kubectl,
/// helm (client-go) and kube-rs all read `certificate-authority` files.
pub(crate) fn render(server: &str, ca_file: &Path, token: &str) -> String {
    let server = yaml_string(server);
    let ca = yaml_string(&ca_file.to_string_lossy());
    let token = yaml_string(token);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: testenv
  context:
    cluster: testenv
    user: admin
    namespace: default
current-context: testenv
"
    )
}

/// A double-quoted YAML scalar. Our values are paths, URLs and hex tokens, so escaping
/// backslashes and quotes is all that is needed.
fn yaml_string(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The CA certificate from kube-apiserver's self-signed `<cert-dir>/apiserver.crt`.
///
/// kube-apiserver (client-go's `GenerateSelfSignedCertKeyWithFixtures`) writes the serving
/// certificate followed by the CA that signed it; the serving certificate carries IP SANs for
/// the advertise and bind address (127.0.0.1) and is not a CA, so clients must trust the second
/// block. Returns None until both blocks are completely written.
pub(crate) fn ca_from_serving_bundle(bundle: &str) -> Option<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut blocks = Vec::new();
    let mut rest = bundle;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start..];
        let end = after.find(END)? + END.len();
        blocks.push(&after[..end]);
        rest = &after[end..];
    }
    match blocks.as_slice() {
        [_serving, ca] => Some(format!("{ca}\n")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_token_kubeconfig() {
        let text = render(
            "https://127.0.0.1:6443",
            Path::new("/tmp/x y/ca.crt"),
            "abc123",
        );
        assert!(text.contains("    server: \"https://127.0.0.1:6443\"\n"));
        assert!(text.contains("    certificate-authority: \"/tmp/x y/ca.crt\"\n"));
        assert!(text.contains("    token: \"abc123\"\n"));
        assert!(text.contains("current-context: testenv\n"));
    }

    #[test]
    fn quotes_yaml_specials() {
        assert_eq!(yaml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn takes_the_ca_only_when_both_blocks_are_complete() {
        let serving = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let ca = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n";
        assert_eq!(ca_from_serving_bundle(""), None);
        assert_eq!(ca_from_serving_bundle(serving), None);
        let partial = format!("{serving}-----BEGIN CERTIFICATE-----\nBB");
        assert_eq!(ca_from_serving_bundle(&partial), None);
        assert_eq!(
            ca_from_serving_bundle(&format!("{serving}{ca}")).as_deref(),
            Some(ca)
        );
    }
}
