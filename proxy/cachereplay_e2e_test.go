package proxy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ollama/ollama/api"
	openai "github.com/sashabaranov/go-openai"

	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// replayCase is a deterministic request whose cached response can be
// replayed as a stream. request holds the body members other than stream.
type replayCase struct {
	path    string
	request string
	sse     bool
}

var replayCases = []replayCase{
	{"/api/chat", `"model":"m","options":{"temperature":0},"messages":[{"role":"user","content":"hi"}]`, false},
	{"/api/generate", `"model":"m","options":{"temperature":0},"prompt":"hi"`, false},
	{"/v1/chat/completions", `"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]`, true},
	{"/v1/completions", `"model":"m","temperature":0,"prompt":"hi"`, true},
}

func (c replayCase) body(stream bool) string {
	return fmt.Sprintf(`{%s,"stream":%t}`, c.request, stream)
}

// checkStreamBody fails the test unless body is a whole NDJSON stream
// ending in a line with done true, or whole SSE events ending in
// data: [DONE].
func checkStreamBody(t *testing.T, c replayCase, body string) {
	t.Helper()
	if !c.sse {
		if !strings.HasSuffix(body, "\n") {
			t.Errorf("NDJSON stream does not end with a newline: %q", body)
		}
		lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
		var last struct {
			Done bool `json:"done"`
		}
		for _, line := range lines {
			if err := json.Unmarshal([]byte(line), &last); err != nil {
				t.Errorf("NDJSON line %q: %v", line, err)
			}
		}
		if !last.Done {
			t.Errorf("last NDJSON line %q, want done true", lines[len(lines)-1])
		}
		return
	}
	if !strings.HasSuffix(body, "data: [DONE]\n\n") {
		t.Errorf("SSE stream does not end with data: [DONE] and a blank line: %q", body)
	}
	events := strings.Split(strings.TrimSuffix(body, "\n\n"), "\n\n")
	for _, ev := range events[:len(events)-1] {
		data, ok := strings.CutPrefix(ev, "data: ")
		if !ok || !json.Valid([]byte(data)) {
			t.Errorf("SSE event %q, want data: and a JSON object", ev)
		}
	}
}

// comparableHeader returns h without the headers that differ between any
// two responses (Date) and the proxy's own X-LLMProxy-* headers.
func comparableHeader(h http.Header) http.Header {
	out := h.Clone()
	out.Del("Date")
	for k := range out {
		if strings.HasPrefix(k, "X-Llmproxy-") {
			delete(out, k)
		}
	}
	return out
}

func TestCachedStreamFramedAsLiveStream(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	for _, c := range replayCases {
		t.Run(strings.TrimPrefix(c.path, "/"), func(t *testing.T) {
			target := f.proxy.URL() + c.path
			stored := post(t, target, c.body(false))
			readBody(t, stored)
			if cacheHeader(stored) != "miss" {
				t.Fatalf("non-streamed request: cache %q, want miss", cacheHeader(stored))
			}

			replay := post(t, target, c.body(true), "X-Request-Id", "replay-test")
			replayBody := string(readBody(t, replay))
			live := post(t, target, c.body(true), "X-Request-Id", "replay-test", "Cache-Control", "no-cache")
			liveBody := string(readBody(t, live))
			if cacheHeader(replay) != "hit-l1" {
				t.Fatalf("streamed request: cache %q, want hit-l1", cacheHeader(replay))
			}
			if live.Header.Get("X-LLMProxy-Node") == "" {
				t.Fatalf("streamed request with no-cache did not come from a node: cache %q", cacheHeader(live))
			}

			if replay.StatusCode != live.StatusCode {
				t.Errorf("replay status %d, live stream status %d", replay.StatusCode, live.StatusCode)
			}
			if !slices.Equal(live.TransferEncoding, []string{"chunked"}) {
				t.Errorf("live stream transfer encoding %v, want chunked", live.TransferEncoding)
			}
			if !slices.Equal(replay.TransferEncoding, []string{"chunked"}) {
				t.Errorf("replay transfer encoding %v, want chunked", replay.TransferEncoding)
			}
			if replay.ContentLength != -1 {
				t.Errorf("replay Content-Length %d, want none", replay.ContentLength)
			}
			if got, want := comparableHeader(replay.Header), comparableHeader(live.Header); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("replay headers\n%v\nwant those of the live stream\n%v", got, want)
			}
			checkStreamBody(t, c, replayBody)
			checkStreamBody(t, c, liveBody)
		})
	}
}

// postHTTP10Raw sends body to path over HTTP/1.0 with the given extra
// header lines and returns the response head and body, read until the
// server closes the connection.
func postHTTP10Raw(t *testing.T, addr, path, body string, header ...string) (string, string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	extra := ""
	for _, h := range header {
		extra += h + "\r\n"
	}
	fmt.Fprintf(conn, "POST %s HTTP/1.0\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s",
		path, extra, len(body), body)
	raw, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("%s: read until close: %v", path, err)
	}
	head, rest, ok := strings.Cut(string(raw), "\r\n\r\n")
	if !ok {
		t.Fatalf("%s: no header end in %q", path, raw)
	}
	return head, rest
}

// headerLines returns the header lines of head, lower-cased and sorted,
// without the status line, Date and X-LLMProxy-* headers.
func headerLines(head string) []string {
	var out []string
	for _, line := range strings.Split(head, "\r\n")[1:] {
		l := strings.ToLower(line)
		if strings.HasPrefix(l, "date:") || strings.HasPrefix(l, "x-llmproxy-") {
			continue
		}
		out = append(out, l)
	}
	slices.Sort(out)
	return out
}

func TestCachedStreamHTTP10EndsByClose(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	for _, c := range replayCases {
		t.Run(strings.TrimPrefix(c.path, "/"), func(t *testing.T) {
			readBody(t, post(t, f.proxy.URL()+c.path, c.body(false)))
			head, body := postHTTP10Raw(t, f.proxy.Addr(), c.path, c.body(true), "X-Request-Id: replay-test")
			liveHead, _ := postHTTP10Raw(t, f.proxy.Addr(), c.path, c.body(true),
				"X-Request-Id: replay-test", "Cache-Control: no-cache")
			if !strings.Contains(strings.ToLower(head), "x-llmproxy-cache: hit-l1") {
				t.Fatalf("HTTP/1.0 stream not served from the cache:\n%s", head)
			}
			lower := strings.ToLower(head)
			if strings.Contains(lower, "transfer-encoding") || strings.Contains(lower, "content-length") {
				t.Errorf("HTTP/1.0 replay framed by a header, want the end of the connection:\n%s", head)
			}
			if got, want := headerLines(head), headerLines(liveHead); !slices.Equal(got, want) {
				t.Errorf("HTTP/1.0 replay headers\n%q\nwant those of the live stream\n%q", got, want)
			}
			checkStreamBody(t, c, body)
		})
	}
}

func TestCachedStreamReadByClients(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	ctx := context.Background()
	streamed := true

	chat := &api.ChatRequest{Model: "m", Messages: []api.Message{{Role: "user", Content: "hi"}},
		Options: map[string]any{"temperature": 0}, Stream: new(bool)}
	if err := f.client(t).Chat(ctx, chat, func(api.ChatResponse) error { return nil }); err != nil {
		t.Fatalf("non-streamed chat: %v", err)
	}
	chat.Stream = &streamed
	var text string
	var last api.ChatResponse
	err := f.client(t).Chat(ctx, chat, func(r api.ChatResponse) error {
		text += r.Message.Content
		last = r
		return nil
	})
	if err != nil {
		t.Fatalf("streamed chat from the cache: %v", err)
	}
	if !last.Done || text == "" || last.EvalCount == 0 {
		t.Errorf("streamed chat from the cache: text %q, done %v, eval_count %d", text, last.Done, last.EvalCount)
	}

	// go-openai sends Cache-Control: no-cache with every stream request,
	// which skips the lookup, so the transport drops it.
	cfg := openai.DefaultConfig("unused")
	cfg.BaseURL = f.proxy.URL() + "/v1"
	cfg.HTTPClient = &http.Client{Transport: dropCacheControl{}}
	oc := openai.NewClientWithConfig(cfg)
	// go-openai omits a zero temperature, so a seed makes the request
	// deterministic.
	req := openai.ChatCompletionRequest{Model: "m",
		Messages: []openai.ChatCompletionMessage{{Role: "user", Content: "hello"}}}
	seed := 3
	req.Seed = &seed
	if _, err := oc.CreateChatCompletion(ctx, req); err != nil {
		t.Fatalf("non-streamed OpenAI chat: %v", err)
	}
	stream, err := oc.CreateChatCompletionStream(ctx, req)
	if err != nil {
		t.Fatalf("streamed OpenAI chat: %v", err)
	}
	defer stream.Close()
	if got := stream.Header().Get("X-LLMProxy-Cache"); got != "hit-l1" {
		t.Errorf("streamed OpenAI chat: cache %q, want hit-l1", got)
	}
	var chunks int
	var content string
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("chunk %d: %v", chunks, err)
		}
		chunks++
		if len(chunk.Choices) > 0 {
			content += chunk.Choices[0].Delta.Content
		}
	}
	if chunks == 0 || content == "" {
		t.Errorf("OpenAI stream from the cache: %d chunks, content %q", chunks, content)
	}
}

// dropCacheControl is an http.RoundTripper that removes the Cache-Control
// request header.
type dropCacheControl struct{}

func (dropCacheControl) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Del("Cache-Control")
	return http.DefaultTransport.RoundTrip(r)
}

// embedInputs are texts of different token counts for the usage tests.
var embedInputs = []string{"the quick brown fox", "jumps", "over the lazy dog again", "and", "runs far away home"}

// embedRaw posts an embedding request and returns the decoded members and
// the cache result.
func embedRaw(t *testing.T, url, body string) (map[string]json.RawMessage, string) {
	t.Helper()
	resp := post(t, url, body)
	raw := readBody(t, resp)
	if resp.StatusCode != 200 {
		t.Fatalf("POST %s: status %d body %s", url, resp.StatusCode, raw)
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(raw, &members); err != nil {
		t.Fatalf("POST %s: body %s: %v", url, raw, err)
	}
	return members, cacheHeader(resp)
}

func inputJSON(texts []string) string {
	b, _ := json.Marshal(texts)
	return string(b)
}

// checkOllamaEmbedUsage checks that an /api/embed response carries the
// usage fields as integers and the node's prompt_eval_count.
func checkOllamaEmbedUsage(t *testing.T, label string, got map[string]json.RawMessage, wantCount int) {
	t.Helper()
	for _, name := range []string{"total_duration", "load_duration", "prompt_eval_count"} {
		var n int64
		if err := json.Unmarshal(got[name], &n); err != nil {
			t.Errorf("%s: %s is %q, want an integer", label, name, got[name])
		}
	}
	var count int
	_ = json.Unmarshal(got["prompt_eval_count"], &count)
	if count != wantCount {
		t.Errorf("%s: prompt_eval_count %d, want the node's %d", label, count, wantCount)
	}
}

func TestEmbedUsageCountsCachedInputs(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	all := `{"model":"embed-e","input":` + inputJSON(embedInputs) + `}`
	direct, _ := embedRaw(t, f.a.URL()+"/api/embed", all)
	var want int
	if err := json.Unmarshal(direct["prompt_eval_count"], &want); err != nil || want < len(embedInputs) {
		t.Fatalf("node's prompt_eval_count %s: %v", direct["prompt_eval_count"], err)
	}

	two := `{"model":"embed-e","input":` + inputJSON([]string{embedInputs[1], embedInputs[3]}) + `}`
	embedRaw(t, f.proxy.URL()+"/api/embed", two)
	partial, res := embedRaw(t, f.proxy.URL()+"/api/embed", all)
	if res != "partial" {
		t.Errorf("partial hit: cache %q, want partial", res)
	}
	checkOllamaEmbedUsage(t, "partial hit", partial, want)

	full, res := embedRaw(t, f.proxy.URL()+"/api/embed", all)
	if res != "hit-l1" {
		t.Errorf("full hit: cache %q, want hit-l1", res)
	}
	checkOllamaEmbedUsage(t, "full hit", full, want)

	u, _ := url.Parse(f.proxy.URL())
	resp, err := api.NewClient(u, http.DefaultClient).Embed(context.Background(),
		&api.EmbedRequest{Model: "embed-e", Input: embedInputs})
	if err != nil {
		t.Fatalf("Ollama client: %v", err)
	}
	if resp.PromptEvalCount != want || len(resp.Embeddings) != len(embedInputs) {
		t.Errorf("Ollama client: prompt_eval_count %d, %d vectors, want %d and %d",
			resp.PromptEvalCount, len(resp.Embeddings), want, len(embedInputs))
	}
}

func TestOpenAIEmbeddingUsageCountsCachedInputs(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	inputs := []string{"hello there", "world"}
	all := `{"model":"embed-e","input":` + inputJSON(inputs) + `}`
	var direct openai.EmbeddingResponse
	resp := post(t, f.a.URL()+"/v1/embeddings", all)
	if err := json.Unmarshal(readBody(t, resp), &direct); err != nil {
		t.Fatal(err)
	}
	want := direct.Usage.PromptTokens
	if want < len(inputs) || direct.Usage.TotalTokens != want {
		t.Fatalf("node's usage %+v", direct.Usage)
	}

	readBody(t, post(t, f.proxy.URL()+"/v1/embeddings", `{"model":"embed-e","input":"world"}`))
	oc := openAIClient(f)
	for _, lookup := range []string{"partial hit", "full hit"} {
		got, err := oc.CreateEmbeddings(context.Background(), openai.EmbeddingRequestStrings{
			Model: "embed-e", Input: inputs, EncodingFormat: openai.EmbeddingEncodingFormatFloat,
		})
		if err != nil {
			t.Fatalf("%s: %v", lookup, err)
		}
		if got.Usage.PromptTokens != want {
			t.Errorf("%s: prompt_tokens %d, want the node's %d", lookup, got.Usage.PromptTokens, want)
		}
		if got.Usage.TotalTokens != want {
			t.Errorf("%s: total_tokens %d, want the node's %d", lookup, got.Usage.TotalTokens, want)
		}
	}
	if n := f.a.Server().Requests("/v1/embeddings"); n != 3 {
		t.Errorf("node saw %d /v1/embeddings requests, want 3: direct, one input, then the other", n)
	}
}

func TestEmbedUsageFromL2(t *testing.T) {
	sim := testenv.Sim(t, "embed-e", ollamasim.Config{})
	_, one, two := twoSharingRedis(t, sim)
	all := `{"model":"embed-e","input":` + inputJSON(embedInputs) + `}`
	direct, _ := embedRaw(t, sim.URL()+"/api/embed", all)
	var want int
	if err := json.Unmarshal(direct["prompt_eval_count"], &want); err != nil {
		t.Fatal(err)
	}

	embedRaw(t, one.URL()+"/api/embed", all)
	got, res := embedRaw(t, two.URL()+"/api/embed", all)
	if res != "hit-l2" {
		t.Errorf("second instance: cache %q, want hit-l2", res)
	}
	checkOllamaEmbedUsage(t, "L2 hit", got, want)
}

func TestCachedV1ResponseKeepsUsage(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	body := func(stream, usage bool) string {
		b := `{"model":"m","temperature":0,"max_tokens":3,"messages":[{"role":"user","content":"usage kept"}]`
		if stream {
			b += `,"stream":true`
		}
		if usage {
			b += `,"stream_options":{"include_usage":true}`
		}
		return b + "}"
	}
	send := func(stream, usage bool) (string, []byte) {
		resp := post(t, f.proxy.URL()+"/v1/chat/completions", body(stream, usage))
		got := readBody(t, resp)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, got)
		}
		return cacheHeader(resp), got
	}

	// A stream without usage fills the cache with a response that has none.
	if result, _ := send(true, false); result != "miss" {
		t.Fatalf("first stream: %q, want miss", result)
	}
	// A non-streamed request needs usage, so it goes to the node.
	result, got := send(false, false)
	if result != "miss" {
		t.Errorf("non-streamed after a stream without usage: %q, want miss", result)
	}
	if !strings.Contains(string(got), `"usage":{`) {
		t.Errorf("non-streamed response without usage: %s", got)
	}
	// The node's response replaced the entry, so usage comes from the cache now.
	result, got = send(false, false)
	if result != "hit-l1" {
		t.Errorf("non-streamed again: %q, want hit-l1", result)
	}
	if !strings.Contains(string(got), `"usage":{`) {
		t.Errorf("cached non-streamed response without usage: %s", got)
	}
	result, got = send(true, true)
	if result != "hit-l1" {
		t.Errorf("stream asking for usage: %q, want hit-l1", result)
	}
	if !strings.Contains(string(got), `"choices":[],"usage":{`) {
		t.Errorf("cached stream asking for usage has no usage chunk: %s", got)
	}
}
