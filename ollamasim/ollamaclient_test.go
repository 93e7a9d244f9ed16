package ollamasim_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ollama/ollama/api"

	"github.com/llmproxy/llmproxy/ollamasim"
)

// The tests in this file drive the node with Ollama's own Go client.

func TestClientHeartbeatAndVersion(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	ctx := context.Background()

	if err := n.client.Heartbeat(ctx); err != nil {
		t.Fatalf("Heartbeat: %v", err)
	}
	version, err := n.client.Version(ctx)
	if err != nil {
		t.Fatalf("Version: %v", err)
	}
	if version != ollamasim.DefaultVersion {
		t.Errorf("Version = %q, want %q", version, ollamasim.DefaultVersion)
	}
}

func TestClientList(t *testing.T) {
	n := startNode(t, ollamasim.Config{})

	list, err := n.client.List(context.Background())
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var names []string
	for _, m := range list.Models {
		names = append(names, m.Name)
		if m.Size <= 0 || len(m.Digest) != 64 || m.ModifiedAt.IsZero() {
			t.Errorf("model %s: size %d, digest %q, modified %v", m.Name, m.Size, m.Digest, m.ModifiedAt)
		}
	}
	slices.Sort(names)
	want := []string{"llama3:8b", "nomic-embed-text:latest", "qwen2.5:7b"}
	if !slices.Equal(names, want) {
		t.Errorf("List names = %v, want %v", names, want)
	}
}

func TestClientShow(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	ctx := context.Background()

	show, err := n.client.Show(ctx, &api.ShowRequest{Model: "llama3:8b"})
	if err != nil {
		t.Fatalf("Show: %v", err)
	}
	if show.Details.Family != "llama" || show.Details.QuantizationLevel != "Q4_K_M" {
		t.Errorf("Show details = %+v", show.Details)
	}
	if !slices.Contains(show.Capabilities, "completion") {
		t.Errorf("Show capabilities = %v, want completion", show.Capabilities)
	}

	_, err = n.client.Show(ctx, &api.ShowRequest{Model: "absent"})
	var statusErr api.StatusError
	if !errors.As(err, &statusErr) || statusErr.StatusCode != http.StatusNotFound {
		t.Errorf("Show of a missing model: error %v, want a 404 StatusError", err)
	}
}

func TestClientGenerateStream(t *testing.T) {
	n := startNode(t, ollamasim.Config{})

	var chunks []api.GenerateResponse
	err := n.client.Generate(context.Background(), &api.GenerateRequest{
		Model:   "llama3:8b",
		Prompt:  "Why is the sky blue?",
		Options: map[string]any{"seed": 42},
	}, func(r api.GenerateResponse) error {
		chunks = append(chunks, r)
		return nil
	})
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	if len(chunks) < 2 {
		t.Fatalf("Generate sent %d lines, want one per token and a final one", len(chunks))
	}
	last := chunks[len(chunks)-1]
	if !last.Done || last.DoneReason != "stop" {
		t.Errorf("final line: done %v, done_reason %q, want true and stop", last.Done, last.DoneReason)
	}
	if last.EvalCount != len(chunks)-1 {
		t.Errorf("eval_count = %d, want %d (one line per token)", last.EvalCount, len(chunks)-1)
	}
	if len(last.Context) != last.PromptEvalCount+last.EvalCount {
		t.Errorf("context has %d tokens, want prompt %d + answer %d",
			len(last.Context), last.PromptEvalCount, last.EvalCount)
	}
	for i, c := range chunks[:len(chunks)-1] {
		if c.Done || c.Response == "" || c.CreatedAt.IsZero() {
			t.Errorf("line %d = %+v, want a token not done", i, c)
		}
	}
}

func TestClientGenerateDeterminism(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	ctx := context.Background()
	run := func(opts map[string]any) string {
		t.Helper()
		var text strings.Builder
		err := n.client.Generate(ctx, &api.GenerateRequest{
			Model:   "llama3:8b",
			Prompt:  "Tell me a story",
			Stream:  ptr(false),
			Options: opts,
		}, func(r api.GenerateResponse) error {
			text.WriteString(r.Response)
			return nil
		})
		if err != nil {
			t.Fatalf("Generate: %v", err)
		}
		return text.String()
	}

	if a, b := run(map[string]any{"seed": 7}), run(map[string]any{"seed": 7}); a != b {
		t.Errorf("same seed, different answers:\n%q\n%q", a, b)
	}
	if a, b := run(map[string]any{"temperature": 0}), run(map[string]any{"temperature": 0}); a != b {
		t.Errorf("temperature 0, different answers:\n%q\n%q", a, b)
	}
	if a, b := run(nil), run(nil); a == b {
		t.Errorf("no seed, same answer twice: %q", a)
	}
	if a, b := run(map[string]any{"seed": 1}), run(map[string]any{"seed": 2}); a == b {
		t.Errorf("seeds 1 and 2 gave the same answer: %q", a)
	}
}

func TestClientGenerateNumPredict(t *testing.T) {
	n := startNode(t, ollamasim.Config{})

	var last api.GenerateResponse
	err := n.client.Generate(context.Background(), &api.GenerateRequest{
		Model:   "llama3:8b",
		Prompt:  "Count",
		Options: map[string]any{"num_predict": 3},
	}, func(r api.GenerateResponse) error {
		last = r
		return nil
	})
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	if last.DoneReason != "length" || last.EvalCount != 3 {
		t.Errorf("done_reason %q, eval_count %d, want length and 3", last.DoneReason, last.EvalCount)
	}
}

func TestClientChatStream(t *testing.T) {
	n := startNode(t, ollamasim.Config{})

	var content strings.Builder
	var last api.ChatResponse
	lines := 0
	err := n.client.Chat(context.Background(), &api.ChatRequest{
		Model: "llama3:8b",
		Messages: []api.Message{
			{Role: "system", Content: "You are terse."},
			{Role: "user", Content: "Hello!"},
		},
		Tools: api.Tools{{Type: "function", Function: api.ToolFunction{Name: "get_time"}}},
	}, func(r api.ChatResponse) error {
		lines++
		content.WriteString(r.Message.Content)
		if r.Message.Role != "assistant" {
			t.Errorf("line %d: role %q, want assistant", lines, r.Message.Role)
		}
		last = r
		return nil
	})
	if err != nil {
		t.Fatalf("Chat: %v", err)
	}
	if !last.Done || last.DoneReason != "stop" || last.EvalCount != lines-1 {
		t.Errorf("final line: done %v, reason %q, eval_count %d, lines %d",
			last.Done, last.DoneReason, last.EvalCount, lines)
	}
	if content.Len() == 0 {
		t.Error("chat answer is empty")
	}
}

func TestClientChatFormatJSON(t *testing.T) {
	n := startNode(t, ollamasim.Config{})

	var content strings.Builder
	err := n.client.Chat(context.Background(), &api.ChatRequest{
		Model:    "llama3:8b",
		Messages: []api.Message{{Role: "user", Content: "Answer in JSON"}},
		Format:   []byte(`"json"`),
	}, func(r api.ChatResponse) error {
		content.WriteString(r.Message.Content)
		return nil
	})
	if err != nil {
		t.Fatalf("Chat: %v", err)
	}
	if !jsonValid(content.String()) {
		t.Errorf("answer with format json is not JSON: %q", content.String())
	}
}

func TestClientEmbed(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	ctx := context.Background()

	resp, err := n.client.Embed(ctx, &api.EmbedRequest{
		Model: "nomic-embed-text",
		Input: []string{"first text", "second text", "first text"},
	})
	if err != nil {
		t.Fatalf("Embed: %v", err)
	}
	if len(resp.Embeddings) != 3 {
		t.Fatalf("Embed returned %d vectors, want 3", len(resp.Embeddings))
	}
	for i, v := range resp.Embeddings {
		if len(v) != ollamasim.DefaultEmbeddingDims {
			t.Errorf("vector %d has %d dimensions, want %d", i, len(v), ollamasim.DefaultEmbeddingDims)
		}
		if norm := vectorNorm(v); math.Abs(norm-1) > 1e-4 {
			t.Errorf("vector %d has norm %v, want 1", i, norm)
		}
	}
	if !slices.Equal(resp.Embeddings[0], resp.Embeddings[2]) {
		t.Error("the same text gave different vectors")
	}
	if slices.Equal(resp.Embeddings[0], resp.Embeddings[1]) {
		t.Error("different texts gave the same vector")
	}
	if resp.PromptEvalCount != 6 {
		t.Errorf("prompt_eval_count = %d, want 6 (two tokens per input)", resp.PromptEvalCount)
	}

	legacy, err := n.client.Embeddings(ctx, &api.EmbeddingRequest{Model: "llama3:8b", Prompt: "first text"})
	if err != nil {
		t.Fatalf("Embeddings: %v", err)
	}
	if len(legacy.Embedding) != ollamasim.DefaultEmbeddingDims {
		t.Errorf("legacy vector has %d dimensions", len(legacy.Embedding))
	}
}

func TestEmbedEmptyStringLoadsOnly(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	status, body := n.post(t, "/api/embed", `{"model":"nomic-embed-text","input":""}`)
	if status != http.StatusOK {
		t.Fatalf("embed status %d %s, want 200", status, body)
	}
	if !bytes.Contains(body, []byte(`"embeddings":[]`)) {
		t.Errorf("embed of \"\" returned %s, want no vector", body)
	}
	if loaded := n.srv.LoadedModels(); !slices.Equal(loaded, []string{"nomic-embed-text:latest"}) {
		t.Errorf("loaded models %v after embedding \"\", want nomic-embed-text:latest", loaded)
	}

	// keep_alive 0 unloads the model that the request loaded.
	status, body = n.post(t, "/api/embed", `{"model":"nomic-embed-text","input":"","keep_alive":0}`)
	if status != http.StatusOK {
		t.Fatalf("unload status %d %s, want 200", status, body)
	}
	if loaded := n.srv.LoadedModels(); len(loaded) != 0 {
		t.Errorf("loaded models %v after keep_alive 0, want none", loaded)
	}

	// The OpenAI route embeds "" as one input.
	status, body = n.post(t, "/v1/embeddings", `{"model":"nomic-embed-text","input":""}`)
	if status != http.StatusOK {
		t.Fatalf("/v1/embeddings status %d %s, want 200", status, body)
	}
	if got := bytes.Count(body, []byte(`"object":"embedding"`)); got != 1 {
		t.Errorf("/v1/embeddings of \"\" returned %d vectors, want 1", got)
	}
}

func TestClientPull(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	ctx := context.Background()

	var statuses []string
	err := n.client.Pull(ctx, &api.PullRequest{Model: "phi3:mini"}, func(p api.ProgressResponse) error {
		statuses = append(statuses, p.Status)
		if strings.HasPrefix(p.Status, "pulling ") && p.Status != "pulling manifest" {
			if p.Total == 0 || p.Completed > p.Total || !strings.HasPrefix(p.Digest, "sha256:") {
				t.Errorf("progress %+v", p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	if statuses[0] != "pulling manifest" || statuses[len(statuses)-1] != "success" {
		t.Errorf("Pull statuses = %v, want pulling manifest first and success last", statuses)
	}
	for _, want := range []string{"verifying sha256 digest", "writing manifest"} {
		if !slices.Contains(statuses, want) {
			t.Errorf("Pull statuses %v lack %q", statuses, want)
		}
	}
	if _, err := n.client.Show(ctx, &api.ShowRequest{Model: "phi3:mini"}); err != nil {
		t.Errorf("Show after Pull: %v", err)
	}
}

func TestClientPullUnknownInRegistry(t *testing.T) {
	n := startNode(t, ollamasim.Config{Registry: map[string]ollamasim.ModelSpec{"phi3": {}}})
	ctx := context.Background()

	err := n.client.Pull(ctx, &api.PullRequest{Model: "nonexistent"}, func(api.ProgressResponse) error { return nil })
	if err == nil || err.Error() != "pull model manifest: file does not exist" {
		t.Errorf("Pull of a name outside the registry: error %v", err)
	}
	if err := n.client.Pull(ctx, &api.PullRequest{Model: "phi3"}, func(api.ProgressResponse) error { return nil }); err != nil {
		t.Errorf("Pull of a registry model: %v", err)
	}

	status, body := n.post(t, "/api/pull", `{"model":"nonexistent","stream":false}`)
	if status != http.StatusInternalServerError || !bytes.Contains(body, []byte("file does not exist")) {
		t.Errorf("non-streamed Pull: status %d, body %s", status, body)
	}
	status, body = n.post(t, "/api/pull", `{"model":"phi3","stream":false}`)
	if status != http.StatusOK || string(body) != `{"status":"success"}` {
		t.Errorf("non-streamed Pull: status %d, body %s", status, body)
	}
}

func TestClientDelete(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	ctx := context.Background()

	if err := n.client.Delete(ctx, &api.DeleteRequest{Model: "qwen2.5:7b"}); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	list, err := n.client.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	for _, m := range list.Models {
		if m.Name == "qwen2.5:7b" {
			t.Error("deleted model still listed")
		}
	}
	err = n.client.Delete(ctx, &api.DeleteRequest{Model: "qwen2.5:7b"})
	var statusErr api.StatusError
	if !errors.As(err, &statusErr) || statusErr.StatusCode != http.StatusNotFound {
		t.Errorf("second Delete: error %v, want a 404 StatusError", err)
	}
}

func TestClientCopy(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	ctx := context.Background()

	if err := n.client.Copy(ctx, &api.CopyRequest{Source: "llama3:8b", Destination: "mine:v1"}); err != nil {
		t.Fatalf("Copy: %v", err)
	}
	show, err := n.client.Show(ctx, &api.ShowRequest{Model: "mine:v1"})
	if err != nil {
		t.Fatalf("Show of the copy: %v", err)
	}
	if show.Details.Family != "llama" {
		t.Errorf("copy family = %q, want llama", show.Details.Family)
	}
	err = n.client.Copy(ctx, &api.CopyRequest{Source: "absent", Destination: "x"})
	var statusErr api.StatusError
	if !errors.As(err, &statusErr) || statusErr.StatusCode != http.StatusNotFound {
		t.Errorf("Copy of a missing model: error %v, want a 404 StatusError", err)
	}
}

func TestClientCreate(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	ctx := context.Background()
	ignore := func(api.ProgressResponse) error { return nil }

	err := n.client.Create(ctx, &api.CreateRequest{Model: "terse", From: "llama3:8b", System: "Be terse."}, ignore)
	if err != nil {
		t.Fatalf("Create from a model: %v", err)
	}
	if _, err := n.client.Show(ctx, &api.ShowRequest{Model: "terse"}); err != nil {
		t.Errorf("Show of the created model: %v", err)
	}

	blob := []byte("GGUF weights")
	sum := sha256.Sum256(blob)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	err = n.client.Create(ctx, &api.CreateRequest{Model: "fromfiles", Files: map[string]string{"m.gguf": digest}}, ignore)
	if err == nil {
		t.Error("Create from a blob never uploaded succeeded")
	}
	if err := n.client.CreateBlob(ctx, digest, bytes.NewReader(blob)); err != nil {
		t.Fatalf("CreateBlob: %v", err)
	}
	err = n.client.Create(ctx, &api.CreateRequest{Model: "fromfiles", Files: map[string]string{"m.gguf": digest}}, ignore)
	if err != nil {
		t.Fatalf("Create from files: %v", err)
	}
	if _, err := n.client.Show(ctx, &api.ShowRequest{Model: "fromfiles"}); err != nil {
		t.Errorf("Show of the model created from files: %v", err)
	}
}

func TestClientListRunning(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	ctx := context.Background()

	err := n.client.Generate(ctx, &api.GenerateRequest{Model: "llama3:8b"}, func(r api.GenerateResponse) error {
		if r.DoneReason != "load" {
			t.Errorf("done_reason = %q, want load", r.DoneReason)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Generate without prompt: %v", err)
	}
	ps, err := n.client.ListRunning(ctx)
	if err != nil {
		t.Fatalf("ListRunning: %v", err)
	}
	if len(ps.Models) != 1 {
		t.Fatalf("ListRunning = %+v, want one model", ps.Models)
	}
	m := ps.Models[0]
	if m.Name != "llama3:8b" || m.ContextLength != ollamasim.DefaultContextLength {
		t.Errorf("running model %s with context %d", m.Name, m.ContextLength)
	}
	if until := time.Until(m.ExpiresAt); until < 4*time.Minute || until > 5*time.Minute {
		t.Errorf("expires in %v, want about the default keep-alive", until)
	}
}

func TestClientBlobs(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	blob := []byte("blob contents")
	sum := sha256.Sum256(blob)
	digest := "sha256:" + hex.EncodeToString(sum[:])

	if resp := n.do(t, context.Background(), http.MethodHead, "/api/blobs/"+digest, ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("HEAD of a missing blob: status %d, want 404", resp.StatusCode)
	}
	if status, body := n.post(t, "/api/blobs/"+digest, "other contents"); status != http.StatusBadRequest {
		t.Errorf("POST with a wrong digest: status %d, body %s", status, body)
	}
	if status, _ := n.post(t, "/api/blobs/"+digest, string(blob)); status != http.StatusCreated {
		t.Errorf("POST of a blob: status %d, want 201", status)
	}
	if resp := n.do(t, context.Background(), http.MethodHead, "/api/blobs/"+digest, ""); resp.StatusCode != http.StatusOK {
		t.Errorf("HEAD of a stored blob: status %d, want 200", resp.StatusCode)
	}
	if status, _ := n.post(t, "/api/blobs/sha256:xyz", "x"); status != http.StatusBadRequest {
		t.Errorf("POST with an invalid digest: status %d, want 400", status)
	}
}

func vectorNorm(v []float32) float64 {
	var sum float64
	for _, x := range v {
		sum += float64(x) * float64(x)
	}
	return math.Sqrt(sum)
}
