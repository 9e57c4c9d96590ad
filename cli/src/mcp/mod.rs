//! `tailor mcp`: the user's local memory and personal model as an MCP server over stdio (the
//! official Rust SDK, `rmcp`), for desktop assistants such as Claude Desktop.
//!
//! Tools: `remember`, `recall`, `forget`, `give_feedback`, `ask_personal_model`. Resources:
//! each memory as `memory://<id>` (its text) and `memory://all` (every memory, JSON).
//! The model and the profile are loaded once, at start; answers run the profile's promoted
//! adapter version, plus any `--adapter`s and `--steer` vector given on the command line.
//! Feedback starts a background training run by itself once `--auto-train-after` new events
//! have come in; it pauses while an answer is generated, and a promoted version answers from
//! the next question.
//! Standard output carries nothing but JSON-RPC; messages go to standard error. A tool that
//! fails answers with an MCP tool error (`isError: true`) saying why; nothing a client sends
//! ends the server.

mod tools;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{
    Implementation, ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ResourceTemplate, ServerCapabilities,
    ServerConfig, SubscriptionFilter,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler, ServiceExt};
use tailor_trainer::{AutoTrain, PersonalModel};

use crate::memory_cmd::ProfileArgs;
use crate::ModelArgs;
use tools::{
    AskArgs, Answer, FeedbackArgs, FeedbackRecorded, ForgetArgs, Forgotten, RecallArgs, Recalled, RememberArgs, Remembered,
    ToolResult, Tools,
};

/// `tailor mcp`.
#[derive(Args)]
pub(crate) struct McpArgs {
    #[command(flatten)]
    profile: ProfileArgs,
    /// Train the profile in the background once this many new feedback events have come in
    /// through `give_feedback` (0: never by itself; `tailor train` still does). A run pauses
    /// between steps while the model answers; a promoted version is used from the next answer.
    #[arg(long, value_name = "N", default_value_t = 3)]
    auto_train_after: usize,
    #[command(flatten)]
    model: ModelArgs,
}

/// Memories per `resources/list` page.
const RESOURCE_PAGE: usize = 200;

/// Loads the model and the profile, then serves MCP on stdin/stdout until the client closes
/// stdin.
pub(crate) fn run(args: McpArgs) -> Result<()> {
    let path: PathBuf = args.profile.path()?;
    let store = args.profile.open()?;
    let engine = args.model.load()?;
    let registry = registry(&engine, &args.model)?;
    let pm = PersonalModel::with_registry(&engine, registry, store, &path).with_context(|| format!("opening the profile {}", path.display()))?;
    let mut auto = AutoTrain::default();
    auto.enabled = args.auto_train_after > 0;
    auto.min_new_feedback = args.auto_train_after.max(1);
    pm.set_auto_train(auto);
    let version = pm.active_version()?;
    eprintln!(
        "tailor mcp: profile {} · model {} · adapter {} · serving MCP on stdio",
        path.display(),
        engine.model_config().name.as_deref().unwrap_or("?"),
        version.as_deref().unwrap_or("none (the base model)")
    );
    let server = TailorMcp::new(Arc::new(Tools::new(pm.clone(), args.model.ctx)));
    // The SDK reports what it drops (oversized lines, failed sends) through `tracing`: to
    // stderr, which assistants keep as the server's log. Stdout stays JSON-RPC only.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_target(false)
        .try_init();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(async move {
        let running = server.serve(rmcp::transport::io::stdio_pipes()).await.context("the MCP handshake")?;
        running.waiting().await.context("serving MCP")?;
        anyhow::Ok(())
    })?;
    eprintln!("tailor mcp: the client closed the connection");
    stop_training(&pm);
    Ok(())
}

/// Asks a background training run still going to stop after its current step (its
/// checkpoint stays, so the next run resumes) and gives it a few seconds to.
fn stop_training(pm: &PersonalModel) {
    let Some(job) = pm.training_job().filter(|j| !j.is_finished()) else { return };
    eprintln!("tailor mcp: stopping the background training run");
    job.cancel();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !job.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if !job.is_finished() {
        eprintln!("tailor mcp: the training run did not stop in time; it ends with the server (its last checkpoint stays)");
    }
}

/// A registry with the `--adapter`s (active with their weights) and the `--steer` vector;
/// the profile's own version is added to it under [`PersonalModel::ADAPTER_NAME`].
fn registry(engine: &tailor::Engine, model: &ModelArgs) -> Result<Arc<tailor::AdapterRegistry>> {
    let reg = tailor::AdapterRegistry::new(engine);
    if let Some(spec) = &model.steer {
        let (path, scale) = crate::path_and_weight(spec)?;
        let v = crate::load_steering(engine, &path).with_context(|| format!("loading steering vector {}", path.display()))?;
        let layers = model.steer_layer_range(engine)?;
        reg.set_residual(Some(Arc::new(tailor::SteeringHook::new(Arc::new(v), scale, layers))));
    }
    let mut active = Vec::new();
    for (i, spec) in model.adapter.iter().enumerate() {
        let (path, w) = crate::path_and_weight(spec)?;
        let name = format!("adapter{i}");
        reg.load(&name, &path).with_context(|| format!("loading adapter {}", path.display()))?;
        active.push((name, w));
    }
    if !active.is_empty() {
        let set: Vec<(&str, f32)> = active.iter().map(|(n, w)| (n.as_str(), *w)).collect();
        reg.activate(&set)?;
    }
    Ok(reg)
}

/// The MCP server: the tools and resources over one open profile.
#[derive(Clone)]
pub(crate) struct TailorMcp {
    tools: Arc<Tools>,
    tool_router: ToolRouter<Self>,
    /// Fires when the memories change (for `subscriptions/listen` streams).
    changes: tokio::sync::broadcast::Sender<()>,
}

/// Runs `f` on the blocking pool (store and model calls block) and shapes its result for MCP:
/// structured content on success, a tool error with the message otherwise.
async fn blocking<T: Send + 'static>(tools: &Arc<Tools>, f: impl FnOnce(&Tools) -> ToolResult<T> + Send + 'static) -> Result<Json<T>, String> {
    let t = tools.clone();
    match tokio::task::spawn_blocking(move || f(&t)).await {
        Ok(Ok(v)) => Ok(Json(v)),
        Ok(Err(e)) => Err(e.0),
        Err(e) => Err(format!("internal error (a bug in tailor): {e}")),
    }
}

#[tool_router]
impl TailorMcp {
    fn new(tools: Arc<Tools>) -> Self {
        TailorMcp { tools, tool_router: Self::tool_router(), changes: tokio::sync::broadcast::channel(16).0 }
    }

    /// Tells the client the memory resources changed: `notifications/resources/list_changed`
    /// on a connection of the handshake revisions (up to 2025-11-25), and on the listen
    /// streams that asked for it on 2026-07-28 connections.
    async fn memories_changed(&self, ctx: &RequestContext<RoleServer>) {
        let _ = self.changes.send(());
        if ctx.protocol_version().is_none_or(|v| v.has_initialize()) {
            let _ = ctx.peer.notify_resource_list_changed().await;
        }
    }

    #[tool(
        description = "Store a fact about the user in their private on-device memory (one fact per call, e.g. \"My dog is called Biscuit.\"). A near-duplicate of a stored memory updates it instead. Returns the memory id.",
        annotations(title = "Remember", read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn remember(&self, Parameters(args): Parameters<RememberArgs>, ctx: RequestContext<RoleServer>) -> Result<Json<Remembered>, String> {
        let out = blocking(&self.tools, move |t| t.remember(args)).await?;
        if out.0.action != "unchanged" {
            self.memories_changed(&ctx).await;
        }
        Ok(out)
    }

    #[tool(
        description = "Search the user's memory for facts relevant to a query (hybrid vector + full-text search). Returns memories with ids and scores, best first.",
        annotations(title = "Recall", read_only_hint = true, open_world_hint = false)
    )]
    async fn recall(&self, Parameters(args): Parameters<RecallArgs>) -> Result<Json<Recalled>, String> {
        blocking(&self.tools, move |t| t.recall(args)).await
    }

    #[tool(
        description = "Forget a memory by id for good (text, history, embedding and index entry), or every memory with all: true and confirm: true.",
        annotations(title = "Forget", read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false)
    )]
    async fn forget(&self, Parameters(args): Parameters<ForgetArgs>, ctx: RequestContext<RoleServer>) -> Result<Json<Forgotten>, String> {
        let out = blocking(&self.tools, move |t| t.forget(args)).await?;
        if out.0.forgotten > 0 {
            self.memories_changed(&ctx).await;
        }
        Ok(out)
    }

    #[tool(
        description = "Record the user's feedback on an answer, which the personal model later trains on: thumbs (up|down), a correction (the answer as it should have been), or chosen with rejected (a preference). A correction is also remembered at once, so the personal model uses it from its next answer. Once enough new feedback has come in (3 events by default), a training run starts in the background (answers go on meanwhile). Returns the feedback id (and the memory id of a correction) and whether this call started a training run.",
        annotations(title = "Give feedback", read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false)
    )]
    async fn give_feedback(&self, Parameters(args): Parameters<FeedbackArgs>, ctx: RequestContext<RoleServer>) -> Result<Json<FeedbackRecorded>, String> {
        let out = blocking(&self.tools, move |t| t.give_feedback(args)).await?;
        if out.0.memory_id.is_some() {
            self.memories_changed(&ctx).await;
        }
        Ok(out)
    }

    #[tool(
        description = "Ask the user's personal on-device model (a small local model with the adapter trained on their feedback, given the memories relevant to the question unless use_memory is false). Returns its answer and the memories it was given.",
        annotations(title = "Ask the personal model", read_only_hint = true, open_world_hint = false)
    )]
    async fn ask_personal_model(&self, Parameters(args): Parameters<AskArgs>, ctx: RequestContext<RoleServer>) -> Result<Json<Answer>, String> {
        let ct = ctx.ct.clone();
        let answer = blocking(&self.tools, move |t| t.ask(args, &|| ct.is_cancelled())).await?;
        if answer.0.finish_reason == "cancelled" {
            // The client gets no answer to a cancelled request; the log says what happened.
            eprintln!("tailor mcp: ask_personal_model cancelled by the client after {} tokens", answer.0.tokens);
        }
        Ok(answer)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for TailorMcp {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_resources().enable_resources_list_changed().build()).with_instructions(
            "The user's private, on-device memory and personal model. Use `remember` for facts the user tells you about themselves, \
             `recall` before answering personal questions, `forget` when they ask you to, `give_feedback` when they judge an answer, \
             and `ask_personal_model` to ask their own local model.",
        );
        info.server_info = Implementation::new("tailor", env!("CARGO_PKG_VERSION"));
        info
    }

    fn accepted_subscription_filter(&self, _requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        Some(SubscriptionFilter::builder().resources_list_changed().build())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let mut changes = self.changes.subscribe();
        loop {
            tokio::select! {
                _ = context.cancelled() => return Ok(()),
                r = changes.recv() => match r {
                    Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if context.sink().notify_resource_list_changed().await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                },
            }
        }
    }

    async fn list_resources(&self, request: Option<PaginatedRequestParams>, _: RequestContext<RoleServer>) -> Result<ListResourcesResult, ErrorData> {
        let after = match request.and_then(|r| r.cursor) {
            None => None,
            Some(c) => Some(c.parse::<i64>().map_err(|_| ErrorData::invalid_params(format!("bad cursor {c:?}"), None))?),
        };
        let t = self.tools.clone();
        let (memories, next) = tokio::task::spawn_blocking(move || t.list_memories(after, RESOURCE_PAGE))
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
            .map_err(|e| ErrorData::internal_error(e.0, None))?;
        let mut resources = Vec::with_capacity(memories.len() + 1);
        if after.is_none() {
            resources.push(
                Resource::new(tools::MEMORY_LIST_URI, "all memories")
                    .with_description("Every memory in the profile: a JSON array of {id, uri, text, created_at, updated_at}")
                    .with_mime_type("application/json"),
            );
        }
        for m in memories {
            let name = format!("memory {}", m.id);
            resources.push(
                Resource::new(tools::memory_uri(m.id), name)
                    .with_description(preview(&m.text))
                    .with_mime_type("text/plain")
                    .with_size(m.text.len() as u64),
            );
        }
        let mut out = ListResourcesResult::with_all_items(resources);
        out.next_cursor = next.map(|n| n.to_string());
        Ok(out)
    }

    async fn list_resource_templates(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![ResourceTemplate::new("memory://{id}", "memory")
            .with_description("One memory's text, by id")
            .with_mime_type("text/plain")]))
    }

    async fn read_resource(&self, request: ReadResourceRequestParams, _: RequestContext<RoleServer>) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri;
        let t = self.tools.clone();
        let contents = if uri == tools::MEMORY_LIST_URI {
            let json = tokio::task::spawn_blocking(move || -> ToolResult<String> {
                let mut all = Vec::new();
                let mut after = None;
                loop {
                    let (page, next) = t.list_memories(after, RESOURCE_PAGE)?;
                    all.extend(page.into_iter().map(|m| {
                        serde_json::json!({ "id": m.id, "uri": tools::memory_uri(m.id), "text": m.text, "created_at": m.created_at, "updated_at": m.updated_at })
                    }));
                    match next {
                        Some(n) => after = Some(n),
                        None => break,
                    }
                }
                Ok(serde_json::Value::Array(all).to_string())
            })
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
            .map_err(|e| ErrorData::internal_error(e.0, None))?;
            ResourceContents::text(json, uri).with_mime_type("application/json")
        } else {
            let id = tools::parse_memory_uri(&uri).map_err(|e| ErrorData::resource_not_found(e.0, None))?;
            let m = tokio::task::spawn_blocking(move || t.memory(id))
                .await
                .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
                .map_err(|e| ErrorData::internal_error(e.0, None))?
                .ok_or_else(|| ErrorData::resource_not_found(format!("no memory with id {id}"), None))?;
            ResourceContents::text(m.text, uri)
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

/// The first line of a memory, cut at 80 characters.
fn preview(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    let mut out: String = line.chars().take(80).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}
