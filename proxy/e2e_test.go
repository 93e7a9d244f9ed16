package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ollama/ollama/api"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// fleet is two simulated nodes behind one proxy: both have "m", only the
// first has the embedding model "embed-e", only the second has "other".
type fleet struct {
	a, b  *ollamasim.Running
	proxy *app.App
}

func newFleet(t *testing.T, cfg ollamasim.Config) *fleet {
	t.Helper()
	f := &fleet{
		a: testenv.Sim(t, "m,embed-e", cfg),
		b: testenv.Sim(t, "m,other", cfg),
	}
	f.proxy = testenv.Proxy(t, testenv.Config(t, f.a, f.b))
	return f
}

func (f *fleet) client(t *testing.T) *api.Client {
	t.Helper()
	u, err := url.Parse(f.proxy.URL())
	if err != nil {
		t.Fatal(err)
	}
	return api.NewClient(u, http.DefaultClient)
}

func (f *fleet) sim(name string) *ollamasim.Server {
	if name == "n0" {
		return f.a.Server()
	}
	return f.b.Server()
}

func post(t *testing.T, url, body string, header ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest("POST", url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	return resp
}

func readBody(t *testing.T, resp *http.Response) []byte {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return b
}

func TestOllamaClientSurface(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	c := f.client(t)
	ctx := context.Background()

	if err := c.Heartbeat(ctx); err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
	v, err := c.Version(ctx)
	if err != nil || v == "" {
		t.Fatalf("version = %q, %v", v, err)
	}
	list, err := c.List(ctx)
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	names := map[string]int{}
	for _, m := range list.Models {
		names[m.Name]++
	}
	for _, want := range []string{"m:latest", "embed-e:latest", "other:latest"} {
		if names[want] != 1 {
			t.Errorf("list has %q %d times, want once (list %v)", want, names[want], names)
		}
	}
	show, err := c.Show(ctx, &api.ShowRequest{Model: "other"})
	if err != nil || show.Details.Family == "" {
		t.Fatalf("show other: %+v, %v", show, err)
	}

	var gen api.GenerateResponse
	stream := false
	err = c.Generate(ctx, &api.GenerateRequest{Model: "m", Prompt: "hi", Stream: &stream},
		func(r api.GenerateResponse) error { gen = r; return nil })
	if err != nil || !gen.Done || gen.Response == "" || gen.EvalCount == 0 {
		t.Fatalf("generate: %+v, %v", gen, err)
	}

	var chunks int
	var last api.ChatResponse
	err = c.Chat(ctx, &api.ChatRequest{Model: "m", Messages: []api.Message{{Role: "user", Content: "hello"}}},
		func(r api.ChatResponse) error { chunks++; last = r; return nil })
	if err != nil {
		t.Fatalf("chat: %v", err)
	}
	if chunks < 3 || !last.Done || last.DoneReason == "" {
		t.Errorf("chat streamed %d chunks, last %+v; want several and a done line", chunks, last)
	}

	emb, err := c.Embed(ctx, &api.EmbedRequest{Model: "embed-e", Input: []string{"alpha", "beta", "gamma"}})
	if err != nil || len(emb.Embeddings) != 3 {
		t.Fatalf("embed: %d vectors, %v", len(emb.Embeddings), err)
	}
	ps, err := c.ListRunning(ctx)
	if err != nil || len(ps.Models) == 0 {
		t.Fatalf("ps: %+v, %v", ps, err)
	}
	running := map[string]int{}
	for _, m := range ps.Models {
		running[m.Name]++
	}
	for name, n := range running {
		if n != 1 {
			t.Errorf("ps lists %s %d times", name, n)
		}
	}
}

func TestModelManagementFansOut(t *testing.T) {
	f := &fleet{
		a: testenv.Sim(t, "m,embed-e", ollamasim.Config{PullTime: 50 * time.Millisecond}),
		// The slower node reaches each stage later, which the merged
		// progress must wait for.
		b: testenv.Sim(t, "m,other", ollamasim.Config{PullTime: 400 * time.Millisecond}),
	}
	f.proxy = testenv.Proxy(t, testenv.Config(t, f.a, f.b))
	c := f.client(t)
	ctx := context.Background()

	var statuses []string
	manifests := 0
	lastCompleted, totals := map[string]int64{}, map[string]int64{}
	err := c.Pull(ctx, &api.PullRequest{Model: "fresh"}, func(p api.ProgressResponse) error {
		statuses = append(statuses, p.Status)
		if p.Status == "pulling manifest" {
			manifests++
		}
		if p.Status == "verifying sha256 digest" {
			// Both nodes have every layer by then.
			for digest, completed := range lastCompleted {
				if completed != totals[digest] {
					t.Errorf("verifying sent with layer %s at %d of %d", digest, completed, totals[digest])
				}
			}
		}
		if p.Digest != "" {
			// The two nodes' progress merges into one bar per layer that
			// never moves back.
			if last, ok := lastCompleted[p.Digest]; ok && p.Completed <= last {
				t.Errorf("layer %s went from %d to %d", p.Digest, last, p.Completed)
			}
			lastCompleted[p.Digest] = p.Completed
			totals[p.Digest] = p.Total
		}
		return nil
	})
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	if manifests != 1 {
		t.Errorf("pull sent %d \"pulling manifest\" lines, want 1 for both nodes", manifests)
	}
	if len(statuses) < 3 || statuses[len(statuses)-1] != "success" {
		t.Fatalf("pull progress %v, want progress lines ending in one success", statuses)
	}
	for _, s := range statuses[:len(statuses)-1] {
		if s == "success" {
			t.Errorf("pull sent a node's own success line before the end: %v", statuses)
		}
	}
	for _, sim := range []*ollamasim.Server{f.a.Server(), f.b.Server()} {
		if sim.Requests("/api/pull") != 1 {
			t.Errorf("a node saw %d pulls, want 1", sim.Requests("/api/pull"))
		}
	}
	// The inventory is refreshed at once: the new model routes right away.
	stream := false
	err = c.Generate(ctx, &api.GenerateRequest{Model: "fresh", Prompt: "x", Stream: &stream},
		func(api.GenerateResponse) error { return nil })
	if err != nil {
		t.Fatalf("generate on a freshly pulled model: %v", err)
	}

	if err := c.Copy(ctx, &api.CopyRequest{Source: "fresh", Destination: "fresh-copy"}); err != nil {
		t.Fatalf("copy: %v", err)
	}
	if err := c.Delete(ctx, &api.DeleteRequest{Model: "fresh"}); err != nil {
		t.Fatalf("delete: %v", err)
	}
	for _, sim := range []*ollamasim.Server{f.a.Server(), f.b.Server()} {
		if sim.Requests("/api/delete") != 1 || sim.Requests("/api/copy") != 1 {
			t.Errorf("a node saw %d deletes and %d copies, want 1 each",
				sim.Requests("/api/delete"), sim.Requests("/api/copy"))
		}
	}
	err = c.Delete(ctx, &api.DeleteRequest{Model: "fresh"})
	var se api.StatusError
	if !errors.As(err, &se) || se.StatusCode != 404 {
		t.Fatalf("second delete: %v, want 404", err)
	}

	resp := post(t, f.proxy.URL()+"/api/pull", `{"model":"another","stream":false}`)
	body := readBody(t, resp)
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"success"`)) {
		t.Fatalf("pull stream:false = %d %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("pull stream:false content type %q", ct)
	}
}

func TestUnknownModelIs404(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	cases := []struct {
		recording, path, body string
	}{
		{"err_unknown_model", "/api/generate", `{"model":"nope","prompt":"x"}`},
		{"openai_err_unknown_model", "/v1/chat/completions",
			`{"model":"nope","messages":[{"role":"user","content":"x"}]}`},
	}
	for _, tc := range cases {
		t.Run(tc.recording, func(t *testing.T) {
			recorded, want := recordedResponse(t, tc.recording)
			resp := post(t, f.proxy.URL()+tc.path, tc.body)
			body := readBody(t, resp)
			if resp.StatusCode != recorded.StatusCode {
				t.Errorf("status %d, want %d as Ollama sends", resp.StatusCode, recorded.StatusCode)
			}
			if !bytes.Equal(bytes.TrimSpace(body), bytes.TrimSpace(want)) {
				t.Errorf("body %s, want %s as Ollama sends", body, want)
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	base := f.proxy.URL()
	cases := []struct {
		name, path, body string
		status           int
		contains         string
	}{
		{"malformed json", "/api/generate", `{"model":`, 400, `{"error":"unexpected EOF"}`},
		// Ollama's messages, from Go's decoder and Ollama's request types.
		{"not an object", "/api/chat", `[1,2]`, 400,
			"json: cannot unmarshal array into Go value of type api.ChatRequest"},
		{"missing model", "/api/chat", `{"messages":[]}`, 400, "model is required"},
		{"model not a string", "/api/chat", `{"model":5,"messages":[]}`, 400,
			"json: cannot unmarshal number into Go struct field ChatRequest.model of type string"},
		{"duplicate key", "/v1/chat/completions", `{"model":"m","model":"x"}`, 400, "duplicate key"},
		{"duplicate option", "/api/chat", `{"model":"m","options":{"num_ctx":1,"num_ctx":8192}}`, 400,
			`duplicate key \"num_ctx\" in options`},
		{"empty body", "/api/embed", ``, 400, "missing request body"},
		{"openai malformed", "/v1/chat/completions", `{`, 400, `"type":"invalid_request_error"`},
		{"unknown path", "/api/nothing", `{}`, 404, "404 page not found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := post(t, base+tc.path, tc.body)
			body := readBody(t, resp)
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d (%s)", resp.StatusCode, tc.status, body)
			}
			if !strings.Contains(string(body), tc.contains) {
				t.Errorf("body %s does not contain %q", body, tc.contains)
			}
		})
	}
}

// TestFanoutBadInput sends bad bodies to the routes that fan out to several
// nodes, and to /api/create, which picks one. Each must get the status,
// content type and error shape of Ollama's response to a bad body, and the
// message that the routed /api/show returns for the same body.
func TestFanoutBadInput(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	recorded, _ := recordedResponse(t, "err_bad_json")
	const reference = "POST /api/show"
	var (
		all       = []string{"POST /api/pull", "DELETE /api/delete", "POST /api/copy", "POST /api/create"}
		named     = []string{"POST /api/pull", "DELETE /api/delete", "POST /api/create"}
		copyRoute = []string{"POST /api/copy"}
	)
	cases := []struct {
		name   string
		routes []string
		body   string
		msg    string // the start of the message
		// routed marks cases where /api/show must return the same body.
		routed bool
	}{
		{"empty body", all, ``, "missing request body", true},
		// Ollama's messages name each route's request type.
		{"array", all, `[]`, "json: cannot unmarshal array into Go value of type api.", false},
		{"number", all, `5`, "json: cannot unmarshal number into Go value of type api.", false},
		// Ollama's message, from Go's encoding/json.
		{"malformed", all, `{bad json}`,
			"invalid character 'b' looking for beginning of object key string", true},
		{"duplicate key", all, `{"model":"m","model":"m"}`, `invalid JSON: duplicate key "model"`, true},
		{"model not a string", named, `{"model":5}`, "json: cannot unmarshal number into Go struct field ",
			false},
		{"name not a string", named, `{"name":5}`, "json: cannot unmarshal number into Go struct field ",
			false},
		{"name not a string beside a model", named, `{"model":"m","name":7}`,
			"json: cannot unmarshal number into Go struct field ", false},
		// DeleteHandler words an empty name as an invalid one.
		{"missing model", []string{"DELETE /api/delete"}, `{}`, `name "" is invalid`, false},
		// Ollama's PullHandler words a missing model as an invalid name,
		// and its CopyHandler an empty source or destination.
		{"missing model of a pull", []string{"POST /api/pull"}, `{}`, "invalid model name", false},
		{"missing source", copyRoute, `{"destination":"x"}`, `source "" is invalid`, false},
		{"missing destination", copyRoute, `{"source":"m"}`, `destination "" is invalid`, false},
		{"source not a string", copyRoute, `{"source":5,"destination":"x"}`,
			"json: cannot unmarshal number into Go struct field CopyRequest.source of type string", false},
		{"destination not a string", copyRoute, `{"source":"m","destination":5}`,
			"json: cannot unmarshal number into Go struct field CopyRequest.destination of type string",
			false},
	}
	for _, tc := range cases {
		var want []byte
		if tc.routed {
			resp, body := send(t, f.proxy.URL(), reference, tc.body)
			if resp.StatusCode != recorded.StatusCode {
				t.Fatalf("%s: %s returned %d %s, want %d", tc.name, reference, resp.StatusCode, body,
					recorded.StatusCode)
			}
			want = body
		}
		for _, route := range tc.routes {
			t.Run(tc.name+" "+route, func(t *testing.T) {
				resp, body := send(t, f.proxy.URL(), route, tc.body)
				if resp.StatusCode != recorded.StatusCode {
					t.Errorf("status %d, want %d as Ollama sends", resp.StatusCode, recorded.StatusCode)
				}
				wantType := recorded.Header.Get("Content-Type")
				if got := resp.Header.Get("Content-Type"); got != wantType {
					t.Errorf("content type %q, want %q as Ollama sends", got, wantType)
				}
				var shape map[string]any
				if err := json.Unmarshal(body, &shape); err != nil || len(shape) != 1 {
					t.Fatalf("body %s, want one JSON object with only an error key", body)
				}
				msg, ok := shape["error"].(string)
				if !ok {
					t.Fatalf("body %s has no error string", body)
				}
				if !strings.HasPrefix(msg, tc.msg) {
					t.Errorf("error %q, want it to start with %q", msg, tc.msg)
				}
				if want != nil && !bytes.Equal(body, want) {
					t.Errorf("body %s, want %s as %s returns", body, want, reference)
				}
			})
		}
	}
	for _, sim := range []*ollamasim.Server{f.a.Server(), f.b.Server()} {
		for _, path := range []string{"/api/pull", "/api/delete", "/api/copy", "/api/create"} {
			if n := sim.Requests(path); n != 0 {
				t.Errorf("a node received %d requests on %s, want none for a bad body", n, path)
			}
		}
	}
}

// send sends body to route, a method and path such as "POST /api/pull", of
// the proxy at baseURL, and returns the response with its body.
func send(t *testing.T, baseURL, route, body string) (*http.Response, []byte) {
	t.Helper()
	method, path, _ := strings.Cut(route, " ")
	req, err := http.NewRequest(method, baseURL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", route, err)
	}
	return resp, readBody(t, resp)
}

// recordedResponse returns the response of a real Ollama server recorded as
// NAME.headers and NAME.body in testdata/ollama-wire, with its body.
func recordedResponse(t *testing.T, name string) (*http.Response, []byte) {
	t.Helper()
	dir := filepath.Join("..", "testdata", "ollama-wire")
	head, err := os.ReadFile(filepath.Join(dir, name+".headers"))
	if err != nil {
		t.Fatalf("read recording: %v", err)
	}
	body, err := os.ReadFile(filepath.Join(dir, name+".body"))
	if err != nil {
		t.Fatalf("read recording: %v", err)
	}
	r := bufio.NewReader(io.MultiReader(bytes.NewReader(head), bytes.NewReader(body)))
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("parse recording %s: %v", name, err)
	}
	return resp, readBody(t, resp)
}

func TestStreamLinesLeaveAsTheyArrive(t *testing.T) {
	// 10 tokens per second: one line every 100 ms.
	f := newFleet(t, ollamasim.Config{TokensPerSec: 10, MinTokens: 30, MaxTokens: 30})
	resp := post(t, f.proxy.URL()+"/api/chat",
		`{"model":"m","messages":[{"role":"user","content":"Count to 50"}]}`)
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Errorf("content type %q", ct)
	}
	if resp.Header.Get("X-Accel-Buffering") != "no" {
		t.Errorf("X-Accel-Buffering = %q, want no", resp.Header.Get("X-Accel-Buffering"))
	}
	node := resp.Header.Get("X-LLMProxy-Node")
	sim := f.sim(node)
	br := bufio.NewReader(resp.Body)
	// The first line arrives while the node is still generating: the
	// proxy did not wait for the whole response.
	line, err := br.ReadBytes('\n')
	if err != nil {
		t.Fatalf("first line: %v", err)
	}
	if sim.InFlight() != 1 {
		t.Errorf("node %s has %d requests in flight after the first line, want 1 (buffered?)",
			node, sim.InFlight())
	}
	var first api.ChatResponse
	if err := json.Unmarshal(line, &first); err != nil || first.Done {
		t.Fatalf("first line %s: %v", line, err)
	}
	lines := 1
	for {
		line, err = br.ReadBytes('\n')
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !json.Valid(line) {
			t.Fatalf("line %d is not one JSON object: %q", lines, line)
		}
		lines++
	}
	if lines != 31 {
		t.Errorf("got %d lines, want 30 tokens and a done line", lines)
	}
}

func TestClientCancelReachesNode(t *testing.T) {
	f := newFleet(t, ollamasim.Config{TokensPerSec: 50})
	t.Run("streaming", func(t *testing.T) {
		resp := post(t, f.proxy.URL()+"/api/generate",
			`{"model":"m","prompt":"Write an essay","options":{"num_predict":4000}}`)
		sim := f.sim(resp.Header.Get("X-LLMProxy-Node"))
		before := sim.Cancelled()
		br := bufio.NewReader(resp.Body)
		for i := 0; i < 3; i++ {
			if _, err := br.ReadBytes('\n'); err != nil {
				t.Fatal(err)
			}
		}
		resp.Body.Close()
		testenv.WaitFor(t, 5*time.Second, "node to see the cancel", func() bool {
			return sim.Cancelled() > before && sim.InFlight() == 0
		})
	})
	t.Run("not streaming", func(t *testing.T) {
		before := f.a.Server().Cancelled() + f.b.Server().Cancelled()
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "POST", f.proxy.URL()+"/api/generate",
			strings.NewReader(`{"model":"m","prompt":"Write an essay","stream":false,"options":{"num_predict":4000}}`))
		_, err := http.DefaultClient.Do(req)
		if err == nil {
			t.Fatal("request finished before the client gave up")
		}
		testenv.WaitFor(t, 5*time.Second, "node to see the cancel", func() bool {
			return f.a.Server().Cancelled()+f.b.Server().Cancelled() > before &&
				f.a.Server().InFlight()+f.b.Server().InFlight() == 0
		})
	})
}

func TestColdLoadIsNotAGatewayError(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{LoadTime: 600 * time.Millisecond})
	cfg := testenv.Config(t, a)
	// The idle limit between chunks must not apply to the wait for the
	// first byte, which covers the load.
	cfg.Upstream.Idle = 100 * time.Millisecond
	p := testenv.Proxy(t, cfg)
	resp := post(t, p.URL()+"/api/chat", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	body := readBody(t, resp)
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"done":true`)) {
		t.Fatalf("cold load response: %d %s", resp.StatusCode, body)
	}
	if a.Server().Loads("m:latest") != 1 {
		t.Errorf("loads = %d, want 1", a.Server().Loads("m:latest"))
	}
}

func TestOllamaRunStaysOnOneNode(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	base := f.proxy.URL()
	req, _ := http.NewRequest("HEAD", base+"/", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("HEAD /: %v %v", resp, err)
	}
	resp.Body.Close()
	nodes := map[string]bool{}
	for _, step := range []struct{ path, body string }{
		{"/api/show", `{"model":"m"}`},
		{"/api/generate", `{"model":"m"}`},
		{"/api/chat", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`},
		{"/api/chat", `{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"x"},{"role":"user","content":"more"}]}`},
	} {
		resp := post(t, base+step.path, step.body)
		readBody(t, resp)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d", step.path, resp.StatusCode)
		}
		nodes[resp.Header.Get("X-LLMProxy-Node")] = true
	}
	if len(nodes) != 1 {
		t.Errorf("the ollama run sequence was served by %v, want one node", nodes)
	}
}

func TestLargeBodyForwardedIntact(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{})
	img := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xAB, 0xCD, 0xEF}, 1<<20))
	body := `{"model":"m","messages":[{"role":"user","content":"look","images":["` + img + `","` + img +
		`"]}],"stream":false,"tools":[],"think":false,"format":"json","options":{"temperature":0.1},"future_field":{"x":1}}`
	if len(body) < 8<<20 {
		t.Fatalf("test body is only %d bytes", len(body))
	}
	cfg := testenv.Config(t, a)
	p := testenv.Proxy(t, cfg)
	resp := post(t, p.URL()+"/api/chat?trace=1", body, "Host", "proxy.example")
	readBody(t, resp)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	got, ok := a.Server().LastRequest("/api/chat")
	if !ok {
		t.Fatal("node saw no chat")
	}
	if !bytes.Equal(got.Body, []byte(body)) {
		t.Errorf("node received %d bytes, want the %d sent, byte for byte", len(got.Body), len(body))
	}
	if got.RequestURI != "/api/chat?trace=1" {
		t.Errorf("request URI %q, want the query kept", got.RequestURI)
	}
	if got.Host != a.Addr() {
		t.Errorf("node saw Host %q, want its own %q", got.Host, a.Addr())
	}

	cfg2 := testenv.Config(t, a)
	cfg2.MaxBodyBytes = 1 << 20
	small := testenv.Proxy(t, cfg2)
	resp = post(t, small.URL()+"/api/chat", body)
	out := readBody(t, resp)
	if resp.StatusCode != 413 {
		t.Fatalf("over the limit: status %d, want 413", resp.StatusCode)
	}
	if msg := errorMessage(t, out); !strings.Contains(msg, "max_body_bytes") {
		t.Errorf("413 body %s", out)
	}
}

func TestForwardedHeaders(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{})
	p := testenv.Proxy(t, testenv.Config(t, a))

	req, err := http.NewRequest("POST", p.URL()+"/api/generate",
		strings.NewReader(`{"model":"m","prompt":"x","stream":false}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range [][2]string{
		{"Keep-Alive", "timeout=5"}, {"Proxy-Authorization", "Basic eDp5"}, {"Te", "trailers"},
		{"Upgrade", "h2c"}, {"Referer", "http://ui.example/chat"},
		{"X-Forwarded-For", "192.0.2.7"}, {"X-Forwarded-For", "198.51.100.9"},
		{"Connection", "keep-alive, X-Hop-Only"}, {"X-Hop-Only", "dropped"},
		{"X-Custom", "kept"}, {"Authorization", "Bearer node-token"},
	} {
		req.Header.Add(kv[0], kv[1])
	}

	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readBody(t, resp)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	got, ok := a.Server().LastRequest("/api/generate")
	if !ok {
		t.Fatal("node saw no generate")
	}

	for _, h := range []string{"Keep-Alive", "Proxy-Authorization", "Te", "Upgrade", "Referer", "X-Hop-Only"} {
		if v := got.Header.Get(h); v != "" {
			t.Errorf("node received %s: %q, want it dropped", h, v)
		}
	}
	if v := got.Header.Values("X-Forwarded-For"); len(v) != 1 || v[0] != "192.0.2.7, 198.51.100.9, 127.0.0.1" {
		t.Errorf("X-Forwarded-For %q, want both client values and the client address in one list", v)
	}
	if v := got.Header.Get("X-Custom"); v != "kept" {
		t.Errorf("X-Custom %q, want it passed on", v)
	}
	// Without API keys configured, Authorization belongs to the node.
	if v := got.Header.Get("Authorization"); v != "Bearer node-token" {
		t.Errorf("Authorization %q, want it passed on when the proxy checks no keys", v)
	}
}

func TestHeaderLimit(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{})
	cookie := strings.Repeat("a", 20<<10)
	gen := `{"model":"m","prompt":"x","stream":false}`

	small := testenv.Proxy(t, testenv.Config(t, a))
	resp := post(t, small.URL()+"/api/generate", gen, "Cookie", "s="+cookie)
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || !strings.Contains(string(body), "8192 bytes") {
		t.Errorf("20 KiB of headers at the default limit: %d %s, want 431 naming 8192 bytes", resp.StatusCode, body)
	}

	cfg := testenv.Config(t, a)
	cfg.MaxHeaderBytes = 64 << 10
	large := testenv.Proxy(t, cfg)
	resp = post(t, large.URL()+"/api/generate", gen, "Cookie", "s="+cookie)
	body = readBody(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("20 KiB of headers with max_header_bytes 64KiB: %d %s, want 200", resp.StatusCode, body)
	}
}

func errorMessage(t *testing.T, body []byte) string {
	t.Helper()
	var e struct{ Error string }
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("error body %q is not {\"error\":...}: %v", body, err)
	}
	return e.Error
}

func TestEmbedKeepsInputOrder(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	in := `{"model":"embed-e","input":["alpha","beta","gamma"]}`
	viaProxy := readBody(t, post(t, f.proxy.URL()+"/api/embed", in))
	direct := readBody(t, post(t, f.a.URL()+"/api/embed", in))
	var p, d api.EmbedResponse
	if err := json.Unmarshal(viaProxy, &p); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(direct, &d); err != nil {
		t.Fatal(err)
	}
	if len(p.Embeddings) != 3 {
		t.Fatalf("%d vectors, want 3", len(p.Embeddings))
	}
	for i := range d.Embeddings {
		if p.Embeddings[i][0] != d.Embeddings[i][0] {
			t.Errorf("vector %d differs from the node's own response", i)
		}
	}
}

func TestRequestHeaders(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	resp := post(t, f.proxy.URL()+"/api/show", `{"model":"m"}`, "X-Request-Id", "abc-123")
	readBody(t, resp)
	if got := resp.Header.Get("X-Request-Id"); got != "abc-123" {
		t.Errorf("X-Request-Id = %q, want the client's", got)
	}
	if resp.Header.Get("X-LLMProxy-Node") == "" {
		t.Error("no X-LLMProxy-Node header")
	}
	resp = post(t, f.proxy.URL()+"/api/show", `{"model":"m"}`)
	readBody(t, resp)
	if resp.Header.Get("X-Request-Id") == "" {
		t.Error("no generated X-Request-Id")
	}
}

func TestBrowserOrigin(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	resp := post(t, f.proxy.URL()+"/api/show", `{"model":"m"}`, "Origin", "https://evil.example")
	readBody(t, resp)
	if resp.StatusCode != 403 {
		t.Errorf("foreign origin: status %d, want 403", resp.StatusCode)
	}
	resp = post(t, f.proxy.URL()+"/api/show", `{"model":"m"}`, "Origin", "http://localhost:3000")
	readBody(t, resp)
	if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "http://localhost:3000" {
		t.Errorf("local origin: status %d, allow-origin %q", resp.StatusCode,
			resp.Header.Get("Access-Control-Allow-Origin"))
	}
	got, _ := f.sim(resp.Header.Get("X-LLMProxy-Node")).LastRequest("/api/show")
	if got.Header.Get("Origin") != "" {
		t.Errorf("node received Origin %q", got.Header.Get("Origin"))
	}
}

func TestUnloadReachesEveryHolder(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	stream := false
	for _, sim := range []*ollamasim.Running{f.a, f.b} {
		// Load m on both nodes directly.
		resp := post(t, sim.URL()+"/api/generate", `{"model":"m"}`)
		readBody(t, resp)
	}
	// Let the proxy see both loads.
	testenv.WaitFor(t, 5*time.Second, "inventory to show m loaded twice", func() bool {
		return len(f.proxy.Balancer().Holding("m:latest")) == 2
	})
	c := f.client(t)
	err := c.Generate(context.Background(),
		&api.GenerateRequest{Model: "m", KeepAlive: &api.Duration{Duration: 0}, Stream: &stream},
		func(r api.GenerateResponse) error {
			if r.DoneReason != "unload" {
				t.Errorf("done_reason %q, want unload", r.DoneReason)
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	for _, sim := range []*ollamasim.Running{f.a, f.b} {
		if loaded := sim.Server().LoadedModels(); len(loaded) != 0 {
			t.Errorf("node %s still has %v loaded", sim.Addr(), loaded)
		}
	}
}

func TestNodeDownIsNotLost(t *testing.T) {
	// A listener that is closed at once: nothing serves there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	a := testenv.Sim(t, "m", ollamasim.Config{})
	cfg := testenv.Config(t, a)
	nc := cfg.Nodes[0]
	nc.Name, nc.URL = "dead", "http://"+dead
	cfg.Nodes = append(cfg.Nodes, nc)
	p := testenv.Proxy(t, cfg)
	resp := post(t, p.URL()+"/api/generate", `{"model":"m","prompt":"x","stream":false}`)
	readBody(t, resp)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d with one dead node", resp.StatusCode)
	}
}

func TestCreateFromBlobStaysOnOneNode(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	c := f.client(t)
	ctx := context.Background()
	data := []byte("GGUF fake weights for a test model")
	digest := fmt.Sprintf("sha256:%x", sha256.Sum256(data))
	if err := c.CreateBlob(ctx, digest, bytes.NewReader(data)); err != nil {
		t.Fatalf("create blob: %v", err)
	}
	var last string
	err := c.Create(ctx, &api.CreateRequest{Model: "made", Files: map[string]string{"model.gguf": digest}},
		func(p api.ProgressResponse) error { last = p.Status; return nil })
	if err != nil || last != "success" {
		t.Fatalf("create: %v, last status %q", err, last)
	}
	blobs := f.a.Server().Requests("/api/blobs/{digest}") + f.b.Server().Requests("/api/blobs/{digest}")
	creates := f.a.Server().Requests("/api/create") + f.b.Server().Requests("/api/create")
	if creates != 1 || blobs < 1 {
		t.Fatalf("nodes saw %d creates and %d blob requests", creates, blobs)
	}
	for _, sim := range []*ollamasim.Server{f.a.Server(), f.b.Server()} {
		if sim.Requests("/api/create") == 1 && sim.Requests("/api/blobs/{digest}") == 0 {
			t.Error("the create ran on a node that never received the blob")
		}
	}
	// The new model routes at once.
	stream := false
	err = c.Generate(ctx, &api.GenerateRequest{Model: "made", Prompt: "x", Stream: &stream},
		func(api.GenerateResponse) error { return nil })
	if err != nil {
		t.Fatalf("generate on the created model: %v", err)
	}
}

func TestUpstreamConnectionsAreReused(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{})
	p := testenv.Proxy(t, testenv.Config(t, a))
	conns := map[string]bool{}
	for i := 0; i < 20; i++ {
		readBody(t, post(t, p.URL()+"/api/generate", `{"model":"m","prompt":"x","stream":false}`))
		readBody(t, post(t, p.URL()+"/api/chat", `{"model":"m","messages":[{"role":"user","content":"x"}]}`))
	}
	for _, route := range []string{"/api/generate", "/api/chat"} {
		last, _ := a.Server().LastRequest(route)
		conns[last.RemoteAddr] = true
	}
	if len(conns) != 1 {
		t.Errorf("the last generate and chat came over %d connections, want one reused connection", len(conns))
	}
}

func TestStreamOutlivesFirstByteTimeout(t *testing.T) {
	// 20 lines 100 ms apart: the stream lasts about 2 s, past first_byte.
	a := testenv.Sim(t, "m", ollamasim.Config{TokensPerSec: 10, MinTokens: 20, MaxTokens: 20})
	cfg := testenv.Config(t, a)
	cfg.Upstream.FirstByte = 700 * time.Millisecond
	cfg.Upstream.Idle = 5 * time.Second
	p := testenv.Proxy(t, cfg)
	body := readBody(t, post(t, p.URL()+"/api/chat", `{"model":"m","messages":[{"role":"user","content":"x"}]}`))
	if bytes.Contains(body, []byte(`"error"`)) || !bytes.Contains(body, []byte(`"done":true`)) {
		t.Errorf("stream cut: %s", body[max(0, len(body)-200):])
	}
}

func TestIdleTimeoutShorterThanFirstByte(t *testing.T) {
	// Every token takes 1 s, and the idle timeout is 300 ms: the stream
	// must end soon after its first line, not when first_byte runs out.
	a := testenv.Sim(t, "m", ollamasim.Config{MinTokens: 20, MaxTokens: 20})
	if err := a.Server().SetFaults(ollamasim.Faults{TokenDelay: time.Second}); err != nil {
		t.Fatal(err)
	}
	cfg := testenv.Config(t, a)
	cfg.Upstream.FirstByte = 20 * time.Second
	cfg.Upstream.Idle = 300 * time.Millisecond
	p := testenv.Proxy(t, cfg)
	start := time.Now()
	body := readBody(t, post(t, p.URL()+"/api/chat", `{"model":"m","messages":[{"role":"user","content":"x"}]}`))
	took := time.Since(start)
	if !bytes.Contains(body, []byte("idle timeout")) {
		t.Errorf("stream without an idle timeout error: %s", body)
	}
	if took > 10*time.Second {
		t.Errorf("the stream ended after %s, want about one token and the 300ms idle timeout", took)
	}
}

func TestHTTP10StreamIsNotChunked(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{MinTokens: 5, MaxTokens: 5})
	p := testenv.Proxy(t, testenv.Config(t, a))
	for _, tc := range []struct{ path, body, last string }{
		{"/api/chat", `{"model":"m","messages":[{"role":"user","content":"x"}]}`, `"done":true`},
		{"/v1/chat/completions", `{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}`,
			"data: [DONE]"},
	} {
		conn, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "POST %s HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
			tc.path, len(tc.body), tc.body)
		// The server ends the body by closing the connection.
		raw, err := io.ReadAll(conn)
		conn.Close()
		if err != nil {
			t.Fatalf("%s: read until close: %v", tc.path, err)
		}
		head, body, ok := strings.Cut(string(raw), "\r\n\r\n")
		if !ok {
			t.Fatalf("%s: no header end in %q", tc.path, raw)
		}
		if !strings.HasPrefix(head, "HTTP/1.1 200") {
			t.Errorf("%s: status line %q", tc.path, strings.SplitN(head, "\r\n", 2)[0])
		}
		if strings.Contains(strings.ToLower(head), "transfer-encoding") ||
			strings.Contains(strings.ToLower(head), "content-length") {
			t.Errorf("%s: HTTP/1.0 response framed by a header:\n%s", tc.path, head)
		}
		lines := strings.Split(strings.TrimSpace(body), "\n")
		if len(lines) < 5 || !strings.Contains(lines[len(lines)-1], tc.last) {
			t.Errorf("%s: body of %d lines ending %q, want the stream unchunked", tc.path, len(lines), lines[len(lines)-1])
		}
		if !strings.HasPrefix(lines[0], "{") && !strings.HasPrefix(lines[0], "data: {") {
			t.Errorf("%s: first body line %q, want a stream line without a chunk size", tc.path, lines[0])
		}
	}
	testenv.WaitFor(t, 5*time.Second, "the slot to be free", func() bool {
		return p.Balancer().Node("n0").Inflight() == 0
	})
}

func TestExpectContinueIsServed(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", f.proxy.URL()+"/api/show",
		strings.NewReader(`{"model":"m"}`))
	req.Header.Set("Expect", "100-continue")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("request with Expect: 100-continue: %v", err)
	}
	readBody(t, resp)
	if resp.StatusCode != 200 {
		t.Errorf("status %d", resp.StatusCode)
	}
}

func TestDuplicateKeysRejected(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	resp := post(t, f.proxy.URL()+"/api/generate", `{"model":"m","model":"other","prompt":"x"}`)
	body := readBody(t, resp)
	if resp.StatusCode != 400 || !strings.Contains(errorMessage(t, body), `duplicate key "model"`) {
		t.Errorf("status %d body %s", resp.StatusCode, body)
	}
}

func TestDataAfterTheBodyIgnored(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	cases := []struct{ name, path, body string }{
		{"text after the object", "/api/generate", `{"model":"other","prompt":"x","stream":false} xyz`},
		{"a second object", "/api/generate", `{"model":"other","prompt":"x","stream":false}{"model":"m"}`},
		{"on /v1", "/v1/chat/completions", `{"model":"other","messages":[{"role":"user","content":"x"}]}` + "\n}"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Ollama reads the first JSON value and ignores the rest, and
			// the proxy must route by that same value: other is on n1 only.
			resp := post(t, f.proxy.URL()+c.path, c.body)
			body := readBody(t, resp)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d, body %s", resp.StatusCode, body)
			}
			if node := resp.Header.Get("X-LLMProxy-Node"); node != "n1" {
				t.Errorf("served by node %q, want n1, the node with the first value's model", node)
			}
		})
	}
}

func TestHeadBlobAnswersAtOnce(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "HEAD",
		f.proxy.URL()+"/api/blobs/sha256:"+strings.Repeat("0", 64), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("HEAD blob: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("status %d, want 404 for a missing blob", resp.StatusCode)
	}
}

// TestBadJSONMatchesRecording sends the body of the recorded response of
// a real Ollama server to a body that is not JSON, to the /api routes that
// decode a body, and checks the response byte for byte against the
// recording.
func TestBadJSONMatchesRecording(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	recorded, want := recordedResponse(t, "err_bad_json")
	for _, route := range []string{"POST /api/generate", "POST /api/chat", "POST /api/embed", "POST /api/show"} {
		t.Run(route, func(t *testing.T) {
			resp, body := send(t, f.proxy.URL(), route, `{bad json}`)
			if resp.StatusCode != recorded.StatusCode {
				t.Errorf("status %d, want %d", resp.StatusCode, recorded.StatusCode)
			}
			if got, want := resp.Header.Get("Content-Type"), recorded.Header.Get("Content-Type"); got != want {
				t.Errorf("content type %q, want %q", got, want)
			}
			if !bytes.Equal(body, want) {
				t.Errorf("body %s, want %s", body, want)
			}
		})
	}
}
