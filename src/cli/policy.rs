//! `theseus policy`: the ValidatingAdmissionPolicy that confines each agent
//! identity to its own node's NodeInstall, for installs without Helm.
//!
//! The chart ships the same two objects
//! (`charts/theseus/templates/agent-admission-policy.yaml`); a test renders
//! both with the same identities and compares them, so they cannot drift.

use std::io::Write;

use clap::{Args, ValueEnum};

/// The user extra a ServiceAccount token bound to a pod carries: the name of
/// the pod's node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// What the API server does with a request the policy refuses.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Refuse the request.
    #[value(name = "Deny")]
    Deny,
    /// Allow it and return a warning to the client.
    #[value(name = "Warn")]
    Warn,
    /// Allow it and record the refusal in the audit log.
    #[value(name = "Audit")]
    Audit,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Deny => "Deny",
            Action::Warn => "Warn",
            Action::Audit => "Audit",
        }
    }
}

/// Print the admission policy (and its binding) that confines each agent to
/// the NodeInstall named after its node.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    theseus policy | kubectl apply -f -\n  \
    theseus policy --agent-service-account ops/fleet-theseus-agent | kubectl apply -f -\n  \
    theseus policy --validation-action Warn --validation-action Audit   # try it first\n  \
    theseus policy --rbac | kubectl apply -f -   # with the agents' ClusterRole, no Helm at all\n\n\
    Agents in pods are known by their ServiceAccount; the node is the one their\n\
    bound token's pod runs on. Agents outside the cluster each have their own\n\
    identity: the user NODE-USER-PREFIX+NODE (a client certificate, in the group\n\
    --node-group) or the ServiceAccount NAMESPACE/PREFIX+NODE.")]
pub struct PolicyArgs {
    /// Name of the ValidatingAdmissionPolicy and of its binding.
    #[arg(long, default_value = "theseus-agent-node")]
    pub name: String,

    /// The in-cluster agents' ServiceAccount, NAMESPACE/NAME (the chart's
    /// RELEASE-NAMESPACE/FULLNAME-agent).
    #[arg(
        long,
        value_name = "NAMESPACE/NAME",
        default_value = "theseus-system/theseus-agent"
    )]
    pub agent_service_account: String,

    /// Out-of-cluster agents: the user name of node NODE is this prefix
    /// followed by NODE (e.g. a client certificate's common name).
    #[arg(long, default_value = "theseus:node:")]
    pub node_user_prefix: String,

    /// Out-of-cluster agents: the group their per-node users belong to (a
    /// client certificate's organization). Every member is confined.
    #[arg(long, default_value = "theseus:nodes")]
    pub node_group: String,

    /// Out-of-cluster agents: the namespace of the per-node ServiceAccounts.
    /// Every ServiceAccount in it is confined.
    #[arg(long, default_value = "theseus-nodes")]
    pub node_service_account_namespace: String,

    /// Out-of-cluster agents: the ServiceAccount of node NODE is this prefix
    /// followed by NODE.
    #[arg(long, default_value = "theseus-node-")]
    pub node_service_account_prefix: String,

    /// What the API server does with a refused request; repeat for several
    /// (Warn and Audit to try the policy before enforcing it).
    #[arg(long, value_enum, default_values_t = [Action::Deny])]
    pub validation_action: Vec<Action>,

    /// Also print the agents' ClusterRole and its binding to the agent
    /// ServiceAccount, --node-group and every ServiceAccount of
    /// --node-service-account-namespace (the chart's agent ClusterRole).
    #[arg(long)]
    pub rbac: bool,

    /// Name of the ClusterRole and ClusterRoleBinding --rbac prints.
    #[arg(long, default_value = "theseus-agent", requires = "rbac")]
    pub rbac_name: String,
}

/// Runs `theseus policy`.
pub fn run(args: &PolicyArgs) -> anyhow::Result<()> {
    let yaml = render(args)?;
    std::io::stdout().lock().write_all(yaml.as_bytes())?;
    Ok(())
}

/// Refuses a value that cannot be placed in a CEL string literal, naming
/// the flag.
fn checked<'a>(flag: &str, value: &'a str) -> anyhow::Result<&'a str> {
    if value.is_empty() {
        anyhow::bail!("--{flag} is empty; give a value or leave the flag out for the default");
    }
    if let Some(c) = value
        .chars()
        .find(|c| matches!(c, '\'' | '"' | '\\') || c.is_whitespace() || c.is_control())
    {
        anyhow::bail!(
            "--{flag} {value:?} contains {c:?}; user, group and object names have no quotes, backslashes or spaces"
        );
    }
    Ok(value)
}

/// The policy and its binding as a YAML stream.
pub fn render(args: &PolicyArgs) -> anyhow::Result<String> {
    let name = checked("name", &args.name)?;
    let (ns, sa) = checked("agent-service-account", &args.agent_service_account)?
        .split_once('/')
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains('/'))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--agent-service-account {:?} is not NAMESPACE/NAME",
                args.agent_service_account
            )
        })?;
    let agent = format!("system:serviceaccount:{ns}:{sa}");
    let prefix = checked("node-user-prefix", &args.node_user_prefix)?;
    let group = checked("node-group", &args.node_group)?;
    let sa_ns = checked(
        "node-service-account-namespace",
        &args.node_service_account_namespace,
    )?;
    let sa_prefix = checked(
        "node-service-account-prefix",
        &args.node_service_account_prefix,
    )?;
    let mut actions: Vec<&str> = args.validation_action.iter().map(|a| a.as_str()).collect();
    actions.dedup();
    if actions.contains(&"Deny") && actions.contains(&"Warn") {
        anyhow::bail!("--validation-action Deny and Warn together are not allowed; choose one");
    }
    let sa_group = format!("system:serviceaccounts:{sa_ns}");
    let mut yaml = policy_yaml(&Identities {
        name,
        agent: &agent,
        prefix,
        group,
        sa_user: &format!("system:serviceaccount:{sa_ns}:{sa_prefix}"),
        sa_group: &sa_group,
        sa_ns,
        sa_prefix,
        actions: &actions,
    });
    if args.rbac {
        let role = checked("rbac-name", &args.rbac_name)?;
        yaml.push_str(&rbac_yaml(role, (ns, sa), group, &sa_group));
    }
    Ok(yaml)
}

/// The agents' ClusterRole (what the chart's agent-clusterrole.yaml
/// grants) and its binding to every agent identity.
fn rbac_yaml(role: &str, (ns, sa): (&str, &str), group: &str, sa_group: &str) -> String {
    format!(
        r#"---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {role}
  labels:
    app.kubernetes.io/part-of: theseus
    app.kubernetes.io/component: agent
rules:
  - apiGroups: ["theseus.dev"]
    resources: ["nodeinstalls"]
    verbs: ["get", "list", "watch", "create", "patch"]
  - apiGroups: ["theseus.dev"]
    resources: ["nodeinstalls/status"]
    verbs: ["get", "patch"]
  - apiGroups: [""]
    resources: ["nodes"]
    verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {role}
  labels:
    app.kubernetes.io/part-of: theseus
    app.kubernetes.io/component: agent
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {role}
subjects:
  - kind: ServiceAccount
    name: {sa}
    namespace: {ns}
  - kind: Group
    apiGroup: rbac.authorization.k8s.io
    name: "{group}"
  - kind: Group
    apiGroup: rbac.authorization.k8s.io
    name: "{sa_group}"
"#
    )
}

/// The validated identities the policy text is built from.
struct Identities<'a> {
    name: &'a str,
    agent: &'a str,
    prefix: &'a str,
    group: &'a str,
    sa_user: &'a str,
    sa_group: &'a str,
    sa_ns: &'a str,
    sa_prefix: &'a str,
    actions: &'a [&'a str],
}

/// The text of the chart's template with the identities filled in.
fn policy_yaml(id: &Identities<'_>) -> String {
    let Identities {
        name,
        agent,
        prefix,
        group,
        sa_user,
        sa_group,
        sa_ns,
        sa_prefix,
        actions,
    } = id;
    let actions: String = actions.iter().map(|a| format!("\n    - {a}")).collect();
    format!(
        r#"---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: {name}
  labels:
    app.kubernetes.io/part-of: theseus
    app.kubernetes.io/component: agent
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - apiGroups: ["theseus.dev"]
        apiVersions: ["*"]
        operations: ["CREATE", "UPDATE", "DELETE"]
        resources: ["nodeinstalls", "nodeinstalls/status"]
  matchConditions:
    - name: agent-identity
      expression: >-
        request.userInfo.username == '{agent}'
        || request.userInfo.username.startsWith('{prefix}')
        || (has(request.userInfo.groups) && request.userInfo.groups.exists(g,
        g == '{group}' || g == '{sa_group}'))
  variables:
    - name: user
      expression: request.userInfo.username
    - name: node
      expression: >-
        variables.user == '{agent}'
        ? (has(request.userInfo.extra)
        && '{NODE_NAME_EXTRA}' in request.userInfo.extra
        && size(request.userInfo.extra['{NODE_NAME_EXTRA}']) == 1
        ? request.userInfo.extra['{NODE_NAME_EXTRA}'][0] : '')
        : variables.user.startsWith('{prefix}')
        ? variables.user.substring(size('{prefix}'))
        : variables.user.startsWith('{sa_user}')
        ? variables.user.substring(size('{sa_user}'))
        : ''
  validations:
    - expression: variables.node != ''
      messageExpression: >-
        'rule node-identity: ' + variables.user + ' is an agent identity but names
        no node; in a pod the agent needs a ServiceAccount token bound to the pod,
        outside the cluster the user {prefix}NODE or the ServiceAccount
        {sa_ns}/{sa_prefix}NODE'
      reason: Forbidden
{RULES}---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: {name}
  labels:
    app.kubernetes.io/part-of: theseus
    app.kubernetes.io/component: agent
spec:
  policyName: {name}
  validationActions:{actions}
"#
    )
}

/// The rules that do not depend on the identities.
const RULES: &str = r#"    - expression: variables.node == '' || request.name == variables.node
      messageExpression: >-
        'rule own-node: the agent of node ' + variables.node + ' may write only
        NodeInstall ' + variables.node + ', not ' + request.name
      reason: Forbidden
    - expression: request.operation != 'DELETE'
      message: >-
        rule no-delete: an agent may not delete a NodeInstall; the operator
        removes the NodeInstalls of removed nodes
      reason: Forbidden
    - expression: >-
        request.operation != 'CREATE' || !has(object.spec) || !has(object.spec.target)
      message: >-
        rule no-target: an agent creates its NodeInstall without spec.target;
        only the operator writes spec
      reason: Forbidden
    - expression: >-
        request.operation != 'UPDATE'
        || (has(object.spec) == has(oldObject.spec)
        && (!has(object.spec) || object.spec == oldObject.spec))
      message: >-
        rule no-spec: an agent may change only the labels and status of its
        NodeInstall; spec is written by the operator
      reason: Forbidden
    - expression: >-
        request.operation != 'UPDATE'
        || (has(object.metadata.annotations) == has(oldObject.metadata.annotations)
        && (!has(object.metadata.annotations)
        || object.metadata.annotations == oldObject.metadata.annotations)
        && has(object.metadata.finalizers) == has(oldObject.metadata.finalizers)
        && (!has(object.metadata.finalizers)
        || object.metadata.finalizers == oldObject.metadata.finalizers)
        && has(object.metadata.ownerReferences) == has(oldObject.metadata.ownerReferences)
        && (!has(object.metadata.ownerReferences)
        || object.metadata.ownerReferences == oldObject.metadata.ownerReferences))
      message: >-
        rule labels-and-status-only: an agent may change only the labels and
        status of its NodeInstall, not its annotations, finalizers or owner
        references
      reason: Forbidden
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: PolicyArgs,
    }

    fn args(argv: &[&str]) -> PolicyArgs {
        Cli::try_parse_from(std::iter::once("policy").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    fn docs(yaml: &str) -> Vec<serde_json::Value> {
        use serde::Deserialize;
        serde_yaml::Deserializer::from_str(yaml)
            .map(|d| serde_json::Value::deserialize(d).unwrap())
            .collect()
    }

    #[test]
    fn defaults_render_a_policy_and_its_binding() {
        let yaml = render(&args(&[])).unwrap();
        let docs = docs(&yaml);
        assert_eq!(docs.len(), 2, "{yaml}");
        assert_eq!(docs[0]["kind"], "ValidatingAdmissionPolicy");
        assert_eq!(docs[1]["kind"], "ValidatingAdmissionPolicyBinding");
        assert_eq!(docs[1]["spec"]["policyName"], "theseus-agent-node");
        assert_eq!(docs[1]["spec"]["validationActions"][0], "Deny");
        let cond = docs[0]["spec"]["matchConditions"][0]["expression"]
            .as_str()
            .unwrap();
        assert!(
            cond.contains("== 'system:serviceaccount:theseus-system:theseus-agent'"),
            "{cond}"
        );
        assert!(
            cond.contains("'system:serviceaccounts:theseus-nodes'"),
            "{cond}"
        );
        let rules: Vec<&str> = docs[0]["spec"]["validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                v.get("message")
                    .or(v.get("messageExpression"))
                    .and_then(|m| m.as_str())
                    .unwrap()
            })
            .collect();
        for rule in [
            "node-identity",
            "own-node",
            "no-delete",
            "no-target",
            "no-spec",
            "labels-and-status-only",
        ] {
            assert!(
                rules.iter().any(|m| m.contains(&format!("rule {rule}:"))),
                "no message names rule {rule}: {rules:?}"
            );
        }
    }

    #[test]
    fn rbac_binds_the_agent_role_to_every_agent_identity() {
        assert_eq!(docs(&render(&args(&[])).unwrap()).len(), 2);
        let docs = docs(&render(&args(&["--rbac", "--node-group", "fleet:nodes"])).unwrap());
        assert_eq!(docs.len(), 4);
        assert_eq!(docs[2]["kind"], "ClusterRole");
        let verbs = &docs[2]["rules"][0]["verbs"];
        assert!(
            !verbs.as_array().unwrap().iter().any(|v| v == "update"),
            "{verbs}"
        );
        assert_eq!(docs[3]["roleRef"]["name"], "theseus-agent");
        let subjects: Vec<&str> = docs[3]["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            subjects,
            [
                "theseus-agent",
                "fleet:nodes",
                "system:serviceaccounts:theseus-nodes"
            ]
        );
    }

    #[test]
    fn identities_come_from_the_flags() {
        let yaml = render(&args(&[
            "--name",
            "p",
            "--agent-service-account",
            "ops/agent",
            "--node-user-prefix",
            "fleet:node:",
            "--node-service-account-namespace",
            "fleet-nodes",
            "--validation-action",
            "Warn",
            "--validation-action",
            "Audit",
        ]))
        .unwrap();
        let docs = docs(&yaml);
        let node = docs[0]["spec"]["variables"][1]["expression"]
            .as_str()
            .unwrap();
        assert!(node.contains("'system:serviceaccount:ops:agent'"), "{node}");
        assert!(node.contains("size('fleet:node:')"), "{node}");
        assert!(
            node.contains("'system:serviceaccount:fleet-nodes:theseus-node-'"),
            "{node}"
        );
        assert_eq!(
            docs[1]["spec"]["validationActions"],
            serde_json::json!(["Warn", "Audit"])
        );
        assert_eq!(docs[1]["metadata"]["name"], "p");
    }

    #[test]
    fn values_that_would_break_the_expressions_are_refused_naming_the_flag() {
        for (argv, flag) in [
            (
                &["--node-user-prefix", "x'||true||'"][..],
                "--node-user-prefix",
            ),
            (
                &["--agent-service-account", "agent"][..],
                "--agent-service-account",
            ),
            (
                &["--agent-service-account", "a/b/c"][..],
                "--agent-service-account",
            ),
            (&["--node-group", ""][..], "--node-group"),
            (
                &["--validation-action", "Deny", "--validation-action", "Warn"][..],
                "--validation-action",
            ),
        ] {
            let err = render(&args(argv)).unwrap_err().to_string();
            assert!(err.contains(flag), "{argv:?}: {err}");
        }
    }
}
