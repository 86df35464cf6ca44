//! Who may do what, against the real server binary with an auth configuration: every RPC
//! called by every kind of caller (anonymous, a pull-request CI identity, a test-namespace
//! writer, Prepare-Artifacts, Validate-Publish, a release manager, an admin). Each allowed
//! call succeeds; each denied one gets UNAUTHENTICATED (no credentials) or
//! PERMISSION_DENIED naming the identity, and leaves the server's state as it was. Then the
//! named stories: the CREEP poisoning attempt, a test token against prod, a stage that may
//! record but not force a re-sign, and audit records naming the authenticated identity
//! whatever actor the client claims.

use bytes::Bytes;
use stagecache_proto::v1::cas_client::CasClient;
use stagecache_proto::v1::info_client::InfoClient;
use stagecache_proto::v1::ledger_client::LedgerClient;
use stagecache_proto::v1::manifests_client::ManifestsClient;
use stagecache_proto::v1::refs_client::RefsClient;
use stagecache_proto::v1::*;
use stagecache_proto::Digest as D;
use stagecache_tests::auth::{
    bearer, identity_claims, start_with_auth, AuthDir, LocalIssuer, SigningKey,
};
use stagecache_tests::{pseudo_random, ServerProcess};
use tonic::transport::Channel;
use tonic::Code;

/// The permission each RPC needs (the issue's table), for the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Read,
    Write,
    /// `ref` on the `bar/` prefix.
    Ref,
    Record,
    Invalidate,
    /// `read` on every namespace (a grant for `*`).
    ReadEverywhere,
    /// `admin` on every namespace (a grant for `*`).
    AdminEverywhere,
}

const RPCS: &[(&str, Need)] = &[
    ("Cas.FindMissing", Need::Read),
    ("Cas.Upload", Need::Write),
    ("Cas.Download", Need::Read),
    ("Cas.BatchUpload", Need::Write),
    ("Cas.BatchDownload", Need::Read),
    ("Manifests.Put", Need::Write),
    ("Manifests.Get", Need::Read),
    ("Refs.Set", Need::Ref),
    ("Refs.Get", Need::Read),
    ("Refs.List", Need::Read),
    ("Refs.History", Need::Read),
    ("Refs.Pin", Need::Ref),
    ("Admin.CollectGarbage (dry run)", Need::ReadEverywhere),
    ("Admin.CollectGarbage", Need::AdminEverywhere),
    ("Info.Stats", Need::Read),
    ("Ledger.Record", Need::Record),
    ("Ledger.RecordBatch", Need::Record),
    ("Ledger.Status", Need::Read),
    ("Ledger.BatchStatus", Need::Read),
    ("Ledger.History", Need::Read),
    ("Ledger.Plan", Need::Read),
    ("Ledger.Invalidate", Need::Invalidate),
    ("Ledger.Claim", Need::Record),
    ("Ledger.RenewClaim", Need::Record),
    ("Ledger.ReleaseClaim", Need::Record),
    ("Ledger.Watch", Need::Read),
];

/// A caller of the matrix: its token (None: anonymous) and what it may do in `prod`.
struct Caller {
    name: &'static str,
    identity: String,
    token: Option<String>,
    may: Vec<Need>,
}

struct Fixture {
    cas: CasClient<Channel>,
    manifests: ManifestsClient<Channel>,
    refs: RefsClient<Channel>,
    info: InfoClient<Channel>,
    ledger: LedgerClient<Channel>,
    cas_channel: Channel,
    admin: String,
    /// A stored blob and a stored manifest naming it (the subject of ledger calls).
    blob: D,
    subject: D,
    counter: u64,
}

async fn fixture(server: &ServerProcess, admin: String) -> Fixture {
    let ch = server.channel().await;
    let mut f = Fixture {
        cas: CasClient::new(ch.clone()),
        manifests: ManifestsClient::new(ch.clone()),
        refs: RefsClient::new(ch.clone()),
        info: InfoClient::new(ch.clone()),
        ledger: LedgerClient::new(ch.clone()),
        cas_channel: ch,
        admin,
        blob: D::of_bytes(b""),
        subject: D::of_bytes(b""),
        counter: 0,
    };
    let data = pseudo_random(1, 4096);
    f.blob = D::of_bytes(&data);
    let admin = Some(f.admin.clone());
    f.cas
        .batch_upload(bearer(
            BatchUploadRequest {
                namespace: "prod".into(),
                items: vec![BatchUploadItem {
                    digest: Some(f.blob.to_proto()),
                    data: Bytes::from(data),
                }],
            },
            admin.as_deref(),
        ))
        .await
        .expect("admin uploads");
    f.subject = f.put_manifest("seed.bin", admin.as_deref()).await.unwrap();
    f.refs
        .set(bearer(
            SetRefRequest {
                namespace: "prod".into(),
                name: "bar/1".into(),
                target: Some(f.subject.to_proto()),
                ..Default::default()
            },
            admin.as_deref(),
        ))
        .await
        .expect("admin sets bar/1");
    f
}

impl Fixture {
    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    async fn put_manifest(&mut self, path: &str, token: Option<&str>) -> Result<D, tonic::Status> {
        let r = self
            .manifests
            .put(bearer(
                PutManifestRequest {
                    namespace: "prod".into(),
                    manifest: Some(Manifest {
                        entries: vec![ManifestEntry {
                            path: path.into(),
                            digest: Some(self.blob.to_proto()),
                            executable: false,
                        }],
                    }),
                },
                token,
            ))
            .await?;
        Ok(D::from_required("digest", r.into_inner().digest.as_ref()).unwrap())
    }

    fn record_req(&self, stage: &str, status: StageStatus, actor: &str) -> RecordRequest {
        RecordRequest {
            namespace: "prod".into(),
            subject: Some(self.subject.to_proto()),
            stage: stage.into(),
            status: status as i32,
            bar_build_id: "12345".into(),
            build_id: "run-1".into(),
            actor: actor.into(),
            ..Default::default()
        }
    }

    /// A claim taken by the admin on a fresh stage: (stage, claim token).
    async fn admin_claim(&mut self) -> (String, String) {
        let stage = format!("Hold {}", self.next());
        let admin = self.admin.clone();
        let r = self
            .ledger
            .claim(bearer(
                ClaimRequest {
                    namespace: "prod".into(),
                    subject: Some(self.subject.to_proto()),
                    stage: stage.clone(),
                    holder: "admin".into(),
                    ttl_seconds: 600,
                    ..Default::default()
                },
                Some(&admin),
            ))
            .await
            .expect("admin claims")
            .into_inner();
        assert!(r.granted);
        (stage, r.claim.unwrap().token)
    }

    /// Everything a denied call could have changed, read by the admin.
    async fn state(&mut self) -> String {
        let admin = Some(self.admin.clone());
        let a = admin.as_deref();
        let stats = self
            .info
            .stats(bearer(
                StatsRequest {
                    namespace: "prod".into(),
                },
                a,
            ))
            .await
            .unwrap()
            .into_inner();
        let refs = self
            .refs
            .list(bearer(
                ListRefsRequest {
                    namespace: "prod".into(),
                    ..Default::default()
                },
                a,
            ))
            .await
            .unwrap()
            .into_inner();
        let history = self
            .ledger
            .history(bearer(
                HistoryRequest {
                    namespace: "prod".into(),
                    subject: Some(self.subject.to_proto()),
                    limit: 1000,
                    ..Default::default()
                },
                a,
            ))
            .await
            .unwrap()
            .into_inner();
        let ref_history = self
            .refs
            .history(bearer(
                RefHistoryRequest {
                    namespace: "prod".into(),
                    name: "bar/1".into(),
                    limit: 1000,
                },
                a,
            ))
            .await
            .unwrap()
            .into_inner();
        format!("{stats:?}\n{refs:?}\n{history:?}\n{ref_history:?}")
    }

    /// Makes one call of `rpc` in `prod` as `token`, built so that it succeeds when
    /// allowed.
    async fn call(&mut self, rpc: &str, token: Option<&str>) -> Result<(), tonic::Status> {
        let n = self.next();
        let ns = || "prod".to_string();
        let subject = Some(self.subject.to_proto());
        match rpc {
            "Cas.FindMissing" => {
                self.cas
                    .find_missing(bearer(
                        FindMissingRequest {
                            namespace: ns(),
                            digests: vec![self.blob.to_proto()],
                        },
                        token,
                    ))
                    .await?;
            }
            "Cas.Upload" => {
                let data = pseudo_random(1000 + n, 1000);
                let d = D::of_bytes(&data);
                let msg = UploadRequest {
                    namespace: ns(),
                    digest: Some(d.to_proto()),
                    data: Bytes::from(data),
                };
                self.cas
                    .upload(bearer(futures::stream::iter(vec![msg]), token))
                    .await?;
            }
            "Cas.Download" => {
                let mut s = self
                    .cas
                    .download(bearer(
                        DownloadRequest {
                            namespace: ns(),
                            digest: Some(self.blob.to_proto()),
                            ..Default::default()
                        },
                        token,
                    ))
                    .await?
                    .into_inner();
                s.message().await?;
            }
            "Cas.BatchUpload" => {
                let data = pseudo_random(2000 + n, 1000);
                self.cas
                    .batch_upload(bearer(
                        BatchUploadRequest {
                            namespace: ns(),
                            items: vec![BatchUploadItem {
                                digest: Some(D::of_bytes(&data).to_proto()),
                                data: Bytes::from(data),
                            }],
                        },
                        token,
                    ))
                    .await?;
            }
            "Cas.BatchDownload" => {
                self.cas
                    .batch_download(bearer(
                        BatchDownloadRequest {
                            namespace: ns(),
                            digests: vec![self.blob.to_proto()],
                        },
                        token,
                    ))
                    .await?;
            }
            "Manifests.Put" => {
                self.put_manifest(&format!("file-{n}.bin"), token).await?;
            }
            "Manifests.Get" => {
                self.manifests
                    .get(bearer(
                        GetManifestRequest {
                            namespace: ns(),
                            digest: subject,
                        },
                        token,
                    ))
                    .await?;
            }
            "Refs.Set" => {
                self.refs
                    .set(bearer(
                        SetRefRequest {
                            namespace: ns(),
                            name: format!("bar/matrix-{n}"),
                            target: subject,
                            ..Default::default()
                        },
                        token,
                    ))
                    .await?;
            }
            "Refs.Get" => {
                self.refs
                    .get(bearer(
                        GetRefRequest {
                            namespace: ns(),
                            name: "bar/1".into(),
                        },
                        token,
                    ))
                    .await?;
            }
            "Refs.List" => {
                self.refs
                    .list(bearer(
                        ListRefsRequest {
                            namespace: ns(),
                            ..Default::default()
                        },
                        token,
                    ))
                    .await?;
            }
            "Refs.History" => {
                self.refs
                    .history(bearer(
                        RefHistoryRequest {
                            namespace: ns(),
                            name: "bar/1".into(),
                            limit: 10,
                        },
                        token,
                    ))
                    .await?;
            }
            "Refs.Pin" => {
                self.refs
                    .pin(bearer(
                        PinRefRequest {
                            namespace: ns(),
                            name: "bar/1".into(),
                            unpin: n.is_multiple_of(2),
                            reason: "released".into(),
                            ..Default::default()
                        },
                        token,
                    ))
                    .await?;
            }
            "Admin.CollectGarbage (dry run)" | "Admin.CollectGarbage" => {
                stagecache_proto::v1::admin_client::AdminClient::new(self.cas_channel.clone())
                    .collect_garbage(bearer(
                        CollectGarbageRequest {
                            namespace: ns(),
                            dry_run: rpc.ends_with("(dry run)"),
                        },
                        token,
                    ))
                    .await?;
            }
            "Info.Stats" => {
                self.info
                    .stats(bearer(StatsRequest { namespace: ns() }, token))
                    .await?;
            }
            "Ledger.Record" => {
                let req = self.record_req(&format!("Stage {n}"), StageStatus::Succeeded, "ci");
                self.ledger.record(bearer(req, token)).await?;
            }
            "Ledger.RecordBatch" => {
                let req = self.record_req(&format!("Stage {n}"), StageStatus::Failed, "ci");
                self.ledger
                    .record_batch(bearer(
                        RecordBatchRequest {
                            namespace: ns(),
                            items: vec![req],
                        },
                        token,
                    ))
                    .await?;
            }
            "Ledger.Status" => {
                self.ledger
                    .status(bearer(
                        StatusRequest {
                            namespace: ns(),
                            subject,
                            ..Default::default()
                        },
                        token,
                    ))
                    .await?;
            }
            "Ledger.BatchStatus" => {
                self.ledger
                    .batch_status(bearer(
                        BatchStatusRequest {
                            namespace: ns(),
                            subjects: vec![self.subject.to_proto()],
                            ..Default::default()
                        },
                        token,
                    ))
                    .await?;
            }
            "Ledger.History" => {
                self.ledger
                    .history(bearer(
                        HistoryRequest {
                            namespace: ns(),
                            subject,
                            ..Default::default()
                        },
                        token,
                    ))
                    .await?;
            }
            "Ledger.Plan" => {
                self.ledger
                    .plan(bearer(
                        PlanRequest {
                            namespace: ns(),
                            subject,
                            graph: Some(StageGraph {
                                stages: vec![StageDef {
                                    name: "Sign".into(),
                                    ..Default::default()
                                }],
                            }),
                            ..Default::default()
                        },
                        token,
                    ))
                    .await?;
            }
            "Ledger.Invalidate" => {
                // A success to void, recorded by the admin first.
                let stage = format!("Signed {n}");
                let admin = self.admin.clone();
                let req = self.record_req(&stage, StageStatus::Succeeded, "ci");
                self.ledger
                    .record(bearer(req, Some(&admin)))
                    .await
                    .expect("admin records");
                self.ledger
                    .invalidate(bearer(
                        InvalidateRequest {
                            namespace: ns(),
                            subject,
                            stage,
                            reason: "forced re-sign".into(),
                            actor: "rm".into(),
                            ..Default::default()
                        },
                        token,
                    ))
                    .await?;
            }
            "Ledger.Claim" => {
                self.ledger
                    .claim(bearer(
                        ClaimRequest {
                            namespace: ns(),
                            subject,
                            stage: format!("Publish {n}"),
                            holder: "run".into(),
                            ttl_seconds: 60,
                            ..Default::default()
                        },
                        token,
                    ))
                    .await?;
            }
            "Ledger.RenewClaim" | "Ledger.ReleaseClaim" => {
                let (stage, claim) = self.admin_claim().await;
                if rpc == "Ledger.RenewClaim" {
                    self.ledger
                        .renew_claim(bearer(
                            RenewClaimRequest {
                                namespace: ns(),
                                subject,
                                stage,
                                token: claim,
                                ttl_seconds: 60,
                                ..Default::default()
                            },
                            token,
                        ))
                        .await?;
                } else {
                    self.ledger
                        .release_claim(bearer(
                            ReleaseClaimRequest {
                                namespace: ns(),
                                subject,
                                stage,
                                token: claim,
                                ..Default::default()
                            },
                            token,
                        ))
                        .await?;
                }
            }
            "Ledger.Watch" => {
                self.ledger
                    .watch(bearer(
                        WatchRequest {
                            namespace: ns(),
                            r#ref: "bar/1".into(),
                            ..Default::default()
                        },
                        token,
                    ))
                    .await?;
            }
            other => panic!("no call for {other}"),
        }
        Ok(())
    }
}

const CONFIG: &str = "";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_by_every_caller() {
    let auth = AuthDir::new(CONFIG);
    let server = start_with_auth(&auth.config(), &[]);
    let mint = |s: &str, g: &[&str]| auth.mint(s, g, "1h");
    let callers = vec![
        Caller {
            name: "anonymous",
            identity: "anonymous".into(),
            token: None,
            may: vec![],
        },
        Caller {
            name: "pull-request CI (read)",
            identity: "token:pr-ci".into(),
            token: Some(mint("pr-ci", &["prod:read"])),
            may: vec![Need::Read],
        },
        Caller {
            name: "test-namespace writer",
            identity: "token:test-writer".into(),
            token: Some(mint(
                "test-writer",
                &["test:read,write,ref,record,invalidate"],
            )),
            may: vec![],
        },
        Caller {
            name: "Prepare-Artifacts",
            identity: "token:prepare".into(),
            token: Some(mint("prepare", &["prod:read,write,ref:bar/"])),
            may: vec![Need::Read, Need::Write, Need::Ref],
        },
        Caller {
            name: "Validate-Publish",
            identity: "token:validate".into(),
            token: Some(mint("validate", &["prod:read,record"])),
            may: vec![Need::Read, Need::Record],
        },
        Caller {
            name: "release manager",
            identity: "token:release-manager".into(),
            token: Some(mint("release-manager", &["prod:read,invalidate"])),
            may: vec![Need::Read, Need::Invalidate],
        },
        Caller {
            name: "admin",
            identity: "token:admin".into(),
            token: Some(mint("admin", &["*:admin"])),
            may: vec![
                Need::Read,
                Need::Write,
                Need::Ref,
                Need::Record,
                Need::Invalidate,
                Need::ReadEverywhere,
                Need::AdminEverywhere,
            ],
        },
    ];
    let admin = callers.last().unwrap().token.clone().unwrap();
    let mut f = fixture(&server, admin).await;
    let (mut allowed, mut denied) = (0, 0);
    for caller in &callers {
        for &(rpc, need) in RPCS {
            let before = f.state().await;
            let result = f.call(rpc, caller.token.as_deref()).await;
            let case = format!("{rpc} by {}", caller.name);
            if caller.may.contains(&need) {
                result.unwrap_or_else(|e| panic!("{case}: allowed, but {e:?}"));
                allowed += 1;
                continue;
            }
            let e = result.expect_err(&format!("{case}: should be denied"));
            if caller.token.is_none() {
                assert_eq!(e.code(), Code::Unauthenticated, "{case}: {e:?}");
                assert!(e.message().contains("token"), "{case}: {e:?}");
            } else {
                assert_eq!(e.code(), Code::PermissionDenied, "{case}: {e:?}");
                assert!(
                    e.message().contains(&caller.identity) && e.message().contains("prod"),
                    "{case}: the message names neither identity nor namespace: {e:?}"
                );
            }
            // Invalidate, Renew and Release first change state as the admin (to have
            // something to void or a claim to renew); compare from after that.
            if !matches!(
                rpc,
                "Ledger.Invalidate" | "Ledger.RenewClaim" | "Ledger.ReleaseClaim"
            ) {
                assert_eq!(
                    before,
                    f.state().await,
                    "{case}: a denied call changed state"
                );
            }
            denied += 1;
        }
    }
    assert_eq!(allowed + denied, RPCS.len() * callers.len());
    assert!(
        allowed > 40 && denied > 60,
        "allowed {allowed}, denied {denied}"
    );
    server.stop().await;
}

/// The denied calls that prepare state as the admin first: that preparation aside, the
/// denied call itself changes nothing (the ledger history is the same before and after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_invalidate_or_claim_change_changes_nothing() {
    let auth = AuthDir::new(CONFIG);
    let server = start_with_auth(&auth.config(), &[]);
    let admin = auth.mint("admin", &["*:admin"], "1h");
    let validate = auth.mint("validate", &["prod:read,record"], "1h");
    let reader = auth.mint("reader", &["prod:read"], "1h");
    let mut f = fixture(&server, admin.clone()).await;
    f.ledger
        .record(bearer(
            f.record_req("Sign", StageStatus::Succeeded, "ci"),
            Some(&admin),
        ))
        .await
        .unwrap();
    let (stage, claim) = f.admin_claim().await;
    let before = f.state().await;
    let e = f
        .ledger
        .invalidate(bearer(
            InvalidateRequest {
                namespace: "prod".into(),
                subject: Some(f.subject.to_proto()),
                stage: "Sign".into(),
                reason: "re-sign".into(),
                ..Default::default()
            },
            Some(&validate),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("invalidate"), "{e:?}");
    let e = f
        .ledger
        .release_claim(bearer(
            ReleaseClaimRequest {
                namespace: "prod".into(),
                subject: Some(f.subject.to_proto()),
                stage: stage.clone(),
                token: claim.clone(),
                ..Default::default()
            },
            Some(&reader),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(before, f.state().await);
    // The claim is still held: another claim on the stage is refused.
    let r = f
        .ledger
        .claim(bearer(
            ClaimRequest {
                namespace: "prod".into(),
                subject: Some(f.subject.to_proto()),
                stage,
                holder: "other".into(),
                ttl_seconds: 60,
                ..Default::default()
            },
            Some(&validate),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.granted, "the denied release released the claim");
    server.stop().await;
}

/// CVE-2025-36852 ("CREEP"): a pull-request run's identity token is valid (same issuer,
/// same repository) but grants only read. It cannot record a success a trusted run would
/// reuse, nor point a release ref at its own bits. The release environment can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creep_a_pull_request_identity_cannot_poison_the_release() {
    let key = SigningKey::rsa("gh-1");
    let issuer = LocalIssuer::start("https://token.actions.example", &[&key]).await;
    let auth = AuthDir::new(&format!(
        r#"
[[oidc]]
name = "github"
issuer = "{iss}"
audiences = ["stagecache"]
algorithms = ["RS256"]
jwks_url = "{jwks}"
[[oidc.rules]]
claims = {{ repository = "dotnet/arcade" }}
grants = [{{ namespaces = "prod", permissions = ["read"] }}]
[[oidc.rules]]
claims = {{ sub = "repo:dotnet/arcade:environment:release" }}
grants = [{{ namespaces = "prod", permissions = ["read", "write", "ref", "record"], refs = ["bar/"] }}]
"#,
        iss = issuer.issuer,
        jwks = issuer.jwks_url
    ));
    let server = start_with_auth(&auth.config(), &[]);
    let token = |sub: &str| {
        key.sign(&identity_claims(
            &issuer.issuer,
            "stagecache",
            serde_json::json!({"sub": sub, "repository": "dotnet/arcade"}),
        ))
    };
    let pr = token("repo:dotnet/arcade:pull_request");
    let release = token("repo:dotnet/arcade:environment:release");
    let mut f = fixture(&server, release.clone()).await;

    // The PR run reads what it likes...
    f.call("Ledger.Status", Some(&pr)).await.unwrap();
    // ...but its bits never become the release's, nor its results the ledger's.
    let poisoned = f.put_manifest("evil.bin", Some(&pr)).await.unwrap_err();
    assert_eq!(poisoned.code(), Code::PermissionDenied);
    let e = f
        .refs
        .set(bearer(
            SetRefRequest {
                namespace: "prod".into(),
                name: "bar/1".into(),
                target: Some(f.blob.to_proto()),
                ..Default::default()
            },
            Some(&pr),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message()
            .contains("github:repo:dotnet/arcade:pull_request"),
        "{e:?}"
    );
    let e = f
        .ledger
        .record(bearer(
            f.record_req(
                "Publish Signed Assets",
                StageStatus::Succeeded,
                "release-bot",
            ),
            Some(&pr),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let status = f
        .ledger
        .status(bearer(
            StatusRequest {
                namespace: "prod".into(),
                subject: Some(f.subject.to_proto()),
                ..Default::default()
            },
            Some(&release),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(status.results.is_empty(), "{status:?}");
    // The release environment records, and the record names it.
    let r = f
        .ledger
        .record(bearer(
            f.record_req(
                "Publish Signed Assets",
                StageStatus::Succeeded,
                "release-bot",
            ),
            Some(&release),
        ))
        .await
        .unwrap()
        .into_inner();
    let result = r.result.unwrap();
    assert_eq!(
        result.identity,
        "github:repo:dotnet/arcade:environment:release"
    );
    assert_eq!(result.actor, "release-bot");
    // A token for another repository gets no grants at all.
    let other = key.sign(&identity_claims(
        &issuer.issuer,
        "stagecache",
        serde_json::json!({"sub": "repo:evil/fork:ref:refs/heads/main", "repository": "evil/fork"}),
    ));
    let e = f.call("Ledger.Status", Some(&other)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("github:repo:evil/fork"), "{e:?}");
    server.stop().await;
}

/// A `test` token cannot touch `prod` (and can do its work in `test`); a stage pipeline
/// can record but not force a re-sign; audit records (ref history, ledger records,
/// invalidations, claims) name the authenticated identity even when the client sends
/// another actor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_resign_and_audit_identity() {
    let auth = AuthDir::new(CONFIG);
    let server = start_with_auth(&auth.config(), &[]);
    let admin = auth.mint("admin", &["*:admin"], "1h");
    let tester = auth.mint("tester", &["test:read,write,ref,record"], "1h");
    let stage_pipeline = auth.mint("validate", &["prod:read,record"], "1h");
    let rm = auth.mint("release-manager", &["prod:read,invalidate"], "1h");
    let mut f = fixture(&server, admin.clone()).await;

    // test -> prod: refused; test -> test: allowed.
    let mut in_test = f.record_req("Sign", StageStatus::Succeeded, "ci");
    let e = f
        .ledger
        .record(bearer(in_test.clone(), Some(&tester)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("namespace prod"), "{e:?}");
    in_test.namespace = "test".into();
    f.ledger
        .record(bearer(in_test, Some(&tester)))
        .await
        .expect("test token records in test");

    // The stage pipeline records Sign (claiming to be someone else)...
    let r = f
        .ledger
        .record(bearer(
            f.record_req("Sign", StageStatus::Succeeded, "mallory"),
            Some(&stage_pipeline),
        ))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(r.identity, "token:validate");
    assert_eq!(
        r.actor, "mallory",
        "the client's actor is kept as 'on behalf of'"
    );
    // ...but cannot void it.
    let invalidate = InvalidateRequest {
        namespace: "prod".into(),
        subject: Some(f.subject.to_proto()),
        stage: "Sign".into(),
        reason: "re-sign".into(),
        actor: "someone".into(),
        ..Default::default()
    };
    let e = f
        .ledger
        .invalidate(bearer(invalidate.clone(), Some(&stage_pipeline)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("token:validate") && e.message().contains("invalidate"));
    // The release manager can; the audit record names them.
    let inv = f
        .ledger
        .invalidate(bearer(invalidate, Some(&rm)))
        .await
        .unwrap()
        .into_inner()
        .invalidation
        .unwrap();
    assert_eq!(inv.identity, "token:release-manager");
    assert_eq!(inv.reason, "re-sign");
    let history = f
        .ledger
        .history(bearer(
            HistoryRequest {
                namespace: "prod".into(),
                subject: Some(f.subject.to_proto()),
                stage: "Sign".into(),
                ..Default::default()
            },
            Some(&admin),
        ))
        .await
        .unwrap()
        .into_inner();
    let identities: Vec<&str> = history
        .results
        .iter()
        .map(|r| r.identity.as_str())
        .collect();
    assert!(
        identities.contains(&"token:release-manager") && identities.contains(&"token:validate"),
        "{identities:?}"
    );

    // Claims and ref changes name their identity too.
    let claim = f
        .ledger
        .claim(bearer(
            ClaimRequest {
                namespace: "prod".into(),
                subject: Some(f.subject.to_proto()),
                stage: "Publish".into(),
                holder: "spoofed-holder".into(),
                ttl_seconds: 60,
                ..Default::default()
            },
            Some(&stage_pipeline),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(claim.claim.unwrap().identity, "token:validate");
    let set = f
        .refs
        .set(bearer(
            SetRefRequest {
                namespace: "prod".into(),
                name: "bar/2".into(),
                target: Some(f.subject.to_proto()),
                actor: "not-really-admin".into(),
                ..Default::default()
            },
            Some(&admin),
        ))
        .await
        .unwrap()
        .into_inner()
        .r#ref
        .unwrap();
    assert_eq!(set.identity, "token:admin");
    let changes = f
        .refs
        .history(bearer(
            RefHistoryRequest {
                namespace: "prod".into(),
                name: "bar/2".into(),
                limit: 10,
            },
            Some(&admin),
        ))
        .await
        .unwrap()
        .into_inner()
        .changes;
    assert_eq!(changes[0].identity, "token:admin");
    assert_eq!(changes[0].actor, "not-really-admin");
    server.stop().await;
}

/// The web page asks for the same identity: no credentials 401 with a Basic challenge,
/// a token without read in the namespace 403, the token as a Basic password or a Bearer
/// header lets the page through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_behind_the_same_identity() {
    use base64::Engine;
    let auth = AuthDir::new(CONFIG);
    let server = start_with_auth(&auth.config(), &["--web-listen", "127.0.0.1:0"]);
    let reader = auth.mint("reader", &["prod:read"], "1h");
    let tester = auth.mint("tester", &["test:read"], "1h");
    let url = format!("{}/ns/prod/builds", server.web_url());
    let http = reqwest::Client::new();
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let challenge = r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(challenge.starts_with("Basic "), "{challenge:?}");
    let r = http.get(&url).bearer_auth(&tester).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.text().await.unwrap().contains("token:tester"));
    let r = http
        .get(&url)
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("me:{reader}"));
    let r = http
        .get(&url)
        .header("authorization", format!("Basic {basic}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = http
        .get(format!("{}/", server.web_url()))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // Who recorded: the authenticated identity, and the actor it named.
    let admin = auth.mint("admin", &["*:admin"], "1h");
    let validate = auth.mint("validate", &["prod:read,record"], "1h");
    let mut f = fixture(&server, admin).await;
    f.ledger
        .record(bearer(
            f.record_req("Sign", StageStatus::Succeeded, "mallory"),
            Some(&validate),
        ))
        .await
        .unwrap();
    let page = http
        .get(format!(
            "{}/ns/prod/ref/bar/1/~stage/Sign",
            server.web_url()
        ))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("token:validate (for mallory)"), "{page}");
    server.stop().await;
}
