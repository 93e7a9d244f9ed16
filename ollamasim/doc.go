// Package ollamasim simulates an Ollama server for tests, demos and
// benchmarks: the native /api routes and the OpenAI-compatible /v1 routes,
// with Ollama's wire format, its scheduler's slots, queue and model loads,
// and injectable faults. It needs no GPU and no model files, because the
// generated text is nonsense drawn from a small vocabulary.
//
// # Starting a node
//
//	srv := ollamasim.New(ollamasim.Config{
//		Models: []ollamasim.ModelSpec{
//			{Name: "llama3:8b"},
//			{Name: "nomic-embed-text", Embedding: true},
//		},
//		LoadTime:     50 * time.Millisecond,
//		TokensPerSec: 200,
//	})
//	node, err := srv.Start("127.0.0.1:0")
//	...
//	defer node.Close()
//	client := api.NewClient(must(url.Parse(node.URL())), http.DefaultClient)
//
// A Server is also an http.Handler, for httptest or another listener. Call
// its Close when done. [Running.Close] closes the listener and the Server.
//
// # Wire format
//
// The format follows recordings of Ollama 0.25: application/json with a
// charset for single objects on /api, application/x-ndjson for /api streams
// (one object per line, flushed per line), text/event-stream for /v1 streams
// ("data: {...}" events ending with "data: [DONE]"), and application/json
// without charset for single /v1 objects. The streams of /v1/responses and
// /v1/messages instead have named events ("event: NAME" before each
// "data:" line) and no "data: [DONE]". Streams are chunked, and so is the
// long /api/show response. Field names and their order match Ollama's,
// including the final line's done, done_reason, context (generate only)
// and the duration and count fields, which report the real time spent.
// Errors are {"error":"..."} on /api, {"error":{"message","type","param",
// "code"}} on the OpenAI routes under /v1, and
// {"type":"error","error":{"type","message"},"request_id"} on
// /v1/messages. A model the node lacks gets 404 "model 'NAME' not found",
// as recorded, except on the embedding routes, where Ollama passes on its
// scheduler's "model \"NAME\" not found, try pulling it first".
// Malformed JSON gets 400 with encoding/json's message. A missing model
// field gets the handler's own error, as an invalid name does: on
// /api/generate the 404 above with an empty NAME, and on /api/chat 400
// "model is required". Like Ollama, a foreign Origin,
// or a foreign Host on a loopback listener, gets 403 with an empty body.
//
// Routes: HEAD and GET /, GET /api/version, /api/tags, /api/ps, POST
// /api/show, /api/generate, /api/chat, /api/embed, /api/embeddings,
// /api/pull, /api/push, /api/create, /api/copy, DELETE /api/delete, HEAD and
// POST /api/blobs/{digest}, POST /v1/chat/completions, /v1/completions,
// /v1/embeddings, /v1/responses, /v1/messages, GET /v1/models and
// /v1/models/{model}. Other paths get 404, or 405 when the path exists for
// another method.
//
// # Behaviour
//
// Generation is deterministic when the request sets options.seed or a
// temperature of 0 (seed or temperature on /v1): the generated text then
// depends only on the model, the prompt tokens and the seed. Other
// completions vary, drawn from a generator seeded by Config.Seed. A
// completion ends on its own after Config.MinTokens to Config.MaxTokens
// tokens (done_reason "stop"), or at num_predict or max_tokens ("length").
// /v1/responses reads max_output_tokens, and /v1/messages max_tokens,
// which it requires, and reports stop_reason "end_turn" or "max_tokens".
// Streaming sends one token per line, paced by Config.TokensPerSec.
// /api/generate and /api/chat stream unless "stream" is false, and /v1
// routes stream only when it is true. A "format" (or a /v1 response_format
// or /v1/responses text.format other than text) wraps the text in a JSON
// object. Tools and think are accepted and ignored.
//
// A request without a prompt (or chat without messages) loads the model,
// without waiting for a slot when it is already loaded, and returns
// done_reason "load". With keep_alive 0 it unloads the model instead and
// returns "unload". keep_alive is a duration string, a number of seconds or
// a negative value (forever). A model idle for its keep_alive unloads.
//
// Each loaded model has Config.Parallel slots. At most that many requests
// for a model run at once, and the others wait in one FIFO queue. Past
// Config.MaxQueue waiting requests the node responds 503 "server busy".
// Loading a model beyond Config.MaxLoaded evicts the least recently used
// idle model, or waits until one is idle. A cold load takes
// Config.LoadTime, spent before the first byte. A request whose num_ctx
// differs from the loaded instance reloads it, as Ollama does.
// load_duration counts the wait for the slot and the load.
//
// Each slot keeps the tokens it processed last (prompt and generated
// text). As in Ollama's runner, a request takes a free slot whose cache its
// prompt extends, or else the least recently used free slot, seeded with
// the longest prefix any slot shares with the prompt. It evaluates only the
// uncached rest, at Config.PromptTokensPerSec, and prompt_eval_count
// reports the evaluated tokens. A conversation sent back with the model's
// replies therefore skips its history, so a proxy that keeps a
// conversation on one node is measurably faster.
//
// Embeddings are unit vectors derived from a hash of the model and the
// text, of ModelSpec.EmbeddingLength dimensions. Any model can embed. An
// /api/embed without input (none, "" or []) or an /api/embeddings without
// prompt loads the model and returns no vector. Unlike a generate, it
// loads the model also with keep_alive 0, and unloads it after, as
// Ollama does.
//
// When a client goes away, the node stops generating at once, frees the
// slot and counts the request in [Stats].Cancelled.
//
// # Faults and control routes
//
// [Faults] describe failures: refusing connections, hanging, 503 busy, a
// share of 500 errors, cut streams, extra delays. Set them with
// [Server.SetFaults] or over HTTP:
//
//	GET    /_sim/faults  returns the active faults as JSON
//	POST   /_sim/faults  replaces them with the body, for example
//	                     {"error_rate":0.5,"seed":7} or {"refuse":true,"clear_after":"2s"}
//	DELETE /_sim/faults  clears them
//	GET    /_sim/stats   returns [Stats] as JSON
//
// The control routes are also served alone by [Server.ControlHandler], for a
// listener that stays reachable while the node refuses connections.
//
// # Observing a node in tests
//
// [Server.Stats] counts requests per route and per model, cold loads,
// cancellations and busy rejections, and reports the requests in flight, the
// queue and the loaded models. [Server.WaitFor] blocks until a condition on
// the counters holds, so tests wait on state instead of sleeping.
// [Server.LastRequest] returns the last request of a route as the node
// received it, body bytes and Host header included.
package ollamasim
