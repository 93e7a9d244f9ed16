package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ollama/ollama/api"
	openai "github.com/sashabaranov/go-openai"

	"github.com/llmproxy/llmproxy/bench/loadgen"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// storyPromptTokens is the prompt_eval_count of a chat of one user message
// "Tell me a story.".
var storyPromptTokens = ollamasim.CountChatPromptTokens(
	[]ollamasim.ChatMessage{{Role: "user", Content: "Tell me a story."}})

// httpClient returns a client with its own transport, closed when the test
// ends.
func httpClient(t *testing.T) *http.Client {
	transport := &http.Transport{}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport}
}

func TestChatStreamWithOllamaClient(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	base, _ := url.Parse(n.url)
	client := api.NewClient(base, httpClient(t))

	var lines []api.ChatResponse
	req := &api.ChatRequest{
		Model:    testModel,
		Messages: []api.Message{{Role: "user", Content: "Tell me a story."}},
	}
	err := client.Chat(context.Background(), req, func(r api.ChatResponse) error {
		lines = append(lines, r)
		return nil
	})
	if err != nil {
		t.Fatalf("chat: %v", err)
	}

	tokens, final := lines[:len(lines)-1], lines[len(lines)-1]
	if len(tokens) < 20 || len(tokens) > 40 {
		t.Errorf("%d token lines, want 20 to 40", len(tokens))
	}
	for i, line := range tokens {
		if line.Done || line.Message.Role != "assistant" || line.Message.Content == "" {
			t.Errorf("line %d = %+v, want an assistant piece that is not done", i, line)
		}
	}
	if !final.Done || final.DoneReason != "stop" {
		t.Errorf("final line done %v, done_reason %q, want true and \"stop\"", final.Done, final.DoneReason)
	}
	if final.EvalCount != len(tokens) {
		t.Errorf("eval_count = %d, want the %d token lines", final.EvalCount, len(tokens))
	}
	if final.PromptEvalCount != storyPromptTokens {
		t.Errorf("prompt_eval_count = %d, want %d", final.PromptEvalCount, storyPromptTokens)
	}
	if final.TotalDuration <= 0 || final.EvalDuration <= 0 || final.PromptEvalDuration <= 0 {
		t.Errorf("durations = %+v, want all positive", final.Metrics)
	}

	// The lean path served it: ollamasim did not count it, GET /_sim/stats does.
	if got := n.node.Requests(routeChat); got != 0 {
		t.Errorf("ollamasim counted %d chat requests, want 0 for a lean stream", got)
	}
	if got := n.mergedStats(t).Requests[routeChat]; got != 1 {
		t.Errorf("/_sim/stats counts %d chat requests, want 1", got)
	}
}

func TestChatStreamStopsAtNumPredict(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	resp := n.do(t, http.MethodPost, routeChat,
		`{"model":"llama3:8b","messages":[{"role":"user","content":"hi"}],"options":{"num_predict":5}}`)
	lines := ndjsonLines(resp.body)
	if len(lines) != 6 {
		t.Fatalf("%d lines, want 5 tokens and the final line: %s", len(lines), resp.body)
	}
	var final api.ChatResponse
	if err := json.Unmarshal(lines[5], &final); err != nil {
		t.Fatalf("decode final line: %v", err)
	}
	if final.DoneReason != "length" || final.EvalCount != 5 {
		t.Errorf("done_reason %q, eval_count %d, want \"length\" and 5", final.DoneReason, final.EvalCount)
	}
}

// openAIClient returns a go-openai client of the node.
func openAIClient(t *testing.T, n *testNode) *openai.Client {
	cfg := openai.DefaultConfig("unused")
	cfg.BaseURL = n.url + "/v1"
	cfg.HTTPClient = httpClient(t)
	return openai.NewClientWithConfig(cfg)
}

// openAIStream reads a whole stream with go-openai.
func openAIStream(t *testing.T, n *testNode, req openai.ChatCompletionRequest) []openai.ChatCompletionStreamResponse {
	t.Helper()
	req.Model = testModel
	req.Messages = []openai.ChatCompletionMessage{{Role: "user", Content: "Tell me a story."}}
	stream, err := openAIClient(t, n).CreateChatCompletionStream(context.Background(), req)
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
	defer stream.Close()
	var chunks []openai.ChatCompletionStreamResponse
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return chunks
		}
		if err != nil {
			t.Fatalf("receive chunk %d: %v", len(chunks), err)
		}
		chunks = append(chunks, chunk)
	}
}

func TestOpenAIStreamWithUsage(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	chunks := openAIStream(t, n, openai.ChatCompletionRequest{
		StreamOptions: &openai.StreamOptions{IncludeUsage: true},
	})

	if len(chunks) < 22 {
		t.Fatalf("%d chunks, want 20 to 40 tokens, the finish chunk and the usage chunk", len(chunks))
	}
	tokens := chunks[:len(chunks)-2]
	finish, usage := chunks[len(chunks)-2], chunks[len(chunks)-1]
	if len(tokens) > 40 {
		t.Errorf("%d token chunks, want at most 40", len(tokens))
	}
	for i, c := range tokens {
		if c.Object != "chat.completion.chunk" || len(c.Choices) != 1 || c.Choices[0].FinishReason != "" ||
			c.Choices[0].Delta.Content == "" {
			t.Errorf("chunk %d = %+v, want a piece without finish_reason", i, c)
		}
		if c.ID != chunks[0].ID {
			t.Errorf("chunk %d has id %q, want the stream's %q", i, c.ID, chunks[0].ID)
		}
	}
	if len(finish.Choices) != 1 || finish.Choices[0].FinishReason != openai.FinishReasonStop {
		t.Errorf("finish chunk = %+v, want finish_reason stop", finish)
	}
	if len(usage.Choices) != 0 || usage.Usage == nil {
		t.Fatalf("usage chunk = %+v, want no choices and usage", usage)
	}
	want := openai.Usage{
		PromptTokens:     storyPromptTokens,
		CompletionTokens: len(tokens),
		TotalTokens:      storyPromptTokens + len(tokens),
	}
	if *usage.Usage != want {
		t.Errorf("usage = %+v, want %+v", *usage.Usage, want)
	}
	if got := n.node.Requests(routeOpenAIChat); got != 0 {
		t.Errorf("ollamasim counted %d requests, want 0 for a lean stream", got)
	}
}

func TestOpenAIStreamMaxTokensWithoutUsage(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	chunks := openAIStream(t, n, openai.ChatCompletionRequest{MaxTokens: 3})
	if len(chunks) != 4 {
		t.Fatalf("%d chunks, want 3 tokens and the finish chunk", len(chunks))
	}
	last := chunks[3]
	if len(last.Choices) != 1 || last.Choices[0].FinishReason != openai.FinishReasonLength {
		t.Errorf("last chunk = %+v, want finish_reason length", last)
	}
	for i, c := range chunks {
		if c.Usage != nil {
			t.Errorf("chunk %d has usage %+v, want none without include_usage", i, c.Usage)
		}
	}
}

// recording reads a response recorded from a real Ollama server.
func recording(t *testing.T, name string) (header []string, body []byte) {
	t.Helper()
	h, err := os.ReadFile("testdata/" + name + ".headers")
	if err != nil {
		t.Fatal(err)
	}
	body, err = os.ReadFile("testdata/" + name + ".body")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(h), "\r\n"), "\r\n"), body
}

// checkHeader compares a response's status line and header lines with a
// recording's, all but Date's value.
func checkHeader(t *testing.T, resp *rawResponse, recorded []string) {
	t.Helper()
	got := append([]string{resp.statusLine}, resp.header...)
	if len(got) != len(recorded) {
		t.Fatalf("status and header = %q, want the lines of %q", got, recorded)
	}
	for i := range got {
		if strings.HasPrefix(recorded[i], "Date: ") {
			date, _ := strings.CutPrefix(got[i], "Date: ")
			if _, err := http.ParseTime(date); err != nil {
				t.Errorf("line %d = %q, want a Date header: %v", i, got[i], err)
			}
			continue
		}
		if got[i] != recorded[i] {
			t.Errorf("line %d = %q, want %q", i, got[i], recorded[i])
		}
	}
}

// checkCompact checks that a JSON frame has no whitespace between tokens,
// as Ollama writes it.
func checkCompact(t *testing.T, frame []byte) {
	t.Helper()
	var compact bytes.Buffer
	if err := json.Compact(&compact, frame); err != nil {
		t.Fatalf("frame %q is not JSON: %v", frame, err)
	}
	if trimmed := bytes.TrimSuffix(frame, []byte("\n")); !bytes.Equal(compact.Bytes(), trimmed) {
		t.Errorf("frame %q is not compact JSON", frame)
	}
}

func TestNDJSONWireMatchesRecording(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	resp := n.do(t, http.MethodPost, routeChat, chatBody)
	recordedHeader, recordedBody := recording(t, "chat_stream")
	checkHeader(t, resp, recordedHeader)

	recorded := ndjsonLines(recordedBody)
	wantToken, wantFinal := jsonKeys(t, recorded[0]), jsonKeys(t, recorded[len(recorded)-1])
	for i, chunk := range resp.chunks {
		if bytes.Count(chunk.data, []byte("\n")) != 1 || !bytes.HasSuffix(chunk.data, []byte("}\n")) {
			t.Fatalf("chunk %d = %q, want one NDJSON line", i, chunk.data)
		}
		checkCompact(t, chunk.data)
		want := wantToken
		if i == len(resp.chunks)-1 {
			want = wantFinal
		}
		if got := jsonKeys(t, chunk.data); !slices.Equal(got, want) {
			t.Errorf("chunk %d has keys %q, want %q as recorded", i, got, want)
		}
	}
}

func TestSSEWireMatchesRecording(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	resp := n.do(t, http.MethodPost, routeOpenAIChat, openAIBody)
	recordedHeader, recordedBody := recording(t, "openai_chat_stream_usage")
	checkHeader(t, resp, recordedHeader)

	recorded := strings.Split(strings.TrimSuffix(string(recordedBody), "\n\n"), "\n\n")
	if len(resp.chunks) < 23 {
		t.Fatalf("%d chunks, want 20 to 40 tokens, finish, usage and [DONE]", len(resp.chunks))
	}
	data := func(event string) []byte {
		d, ok := strings.CutPrefix(event, "data: ")
		if !ok {
			t.Fatalf("event %q does not start with \"data: \"", event)
		}
		return []byte(d)
	}
	wantToken := jsonKeys(t, data(recorded[0]))
	wantFinish := jsonKeys(t, data(recorded[len(recorded)-3]))
	wantUsage := jsonKeys(t, data(recorded[len(recorded)-2]))

	last := len(resp.chunks) - 1
	for i, chunk := range resp.chunks {
		event, ok := strings.CutSuffix(string(chunk.data), "\n\n")
		if !ok || strings.Contains(event, "\n") {
			t.Fatalf("chunk %d = %q, want one event", i, chunk.data)
		}
		if i == last {
			if event != "data: [DONE]" {
				t.Errorf("last event = %q, want data: [DONE]", event)
			}
			continue
		}
		var want []string
		switch i {
		case last - 1:
			want = wantUsage
		case last - 2:
			want = wantFinish
		default:
			want = wantToken
		}
		checkCompact(t, data(event))
		// stampsim adds sent_at first; the rest is as recorded.
		want = append([]string{"sent_at"}, want...)
		if got := jsonKeys(t, data(event)); !slices.Equal(got, want) {
			t.Errorf("chunk %d has keys %q, want %q", i, got, want)
		}
	}
}

func TestStampsNearReceiveTime(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	cases := []struct {
		path, body, key string
	}{
		{routeChat, chatBody, `"created_at":"`},
		{routeOpenAIChat, openAIBody, `"sent_at":"`},
	}
	for _, tc := range cases {
		resp := n.do(t, http.MethodPost, tc.path, tc.body)
		stamped := 0
		for i, chunk := range resp.chunks {
			_, rest, found := bytes.Cut(chunk.data, []byte(tc.key))
			if !found {
				continue
			}
			value, _, _ := bytes.Cut(rest, []byte(`"`))
			sent, err := time.Parse(time.RFC3339Nano, string(value))
			if err != nil {
				t.Fatalf("%s chunk %d: stamp %q: %v", tc.path, i, value, err)
			}
			if !strings.HasSuffix(string(value), "Z") {
				t.Errorf("%s chunk %d: stamp %q is not in UTC", tc.path, i, value)
			}
			if delay := chunk.received.Sub(sent); delay < -time.Millisecond || delay > 5*time.Millisecond {
				t.Errorf("%s chunk %d arrived %v after its stamp, want 0 to 5ms", tc.path, i, delay)
			}
			stamped++
		}
		if stamped < 21 {
			t.Errorf("%s: %d stamped chunks, want every token and the final frame", tc.path, stamped)
		}
	}
}

func TestStreamPacedAtTokenRate(t *testing.T) {
	// 100 tokens per second: a token every 10 ms.
	n := startNode(t, ollamasim.Config{TokensPerSec: 100})
	c := n.dial(t)
	defer c.close()
	sent := time.Now()
	resp := c.roundTrip(t, rawRequest(http.MethodPost, routeChat, n.addr,
		`{"model":"llama3:8b","messages":[{"role":"user","content":"hi"}],"options":{"num_predict":6}}`, ""))

	if first := resp.chunks[0].received.Sub(sent); first < 8*time.Millisecond || first > 30*time.Millisecond {
		t.Errorf("first chunk after %v, want about one token time, 10ms", first)
	}
	total := resp.chunks[5].received.Sub(resp.chunks[0].received)
	if total < 45*time.Millisecond || total > 80*time.Millisecond {
		t.Errorf("tokens 1 to 6 took %v, want about 5 token times, 50ms", total)
	}
}

func TestKeepAliveServesStreamsInTurn(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	c := n.dial(t)
	defer c.close()
	for i, tc := range []struct{ path, body string }{
		{routeChat, chatBody},
		{routeOpenAIChat, openAIBody},
		{routeChat, chatBody},
	} {
		resp := c.roundTrip(t, rawRequest(http.MethodPost, tc.path, n.addr, tc.body, ""))
		if resp.status != http.StatusOK || len(resp.chunks) < 21 {
			t.Fatalf("stream %d on one connection: status %d, %d chunks", i, resp.status, len(resp.chunks))
		}
		if _, set := resp.headerValue("Connection"); set {
			t.Errorf("stream %d has a Connection header, want none on a kept-alive connection", i)
		}
	}
}

func TestConnectionCloseEndsConnection(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	c := n.dial(t)
	defer c.close()
	resp := c.roundTrip(t, rawRequest(http.MethodPost, routeChat, n.addr, chatBody, "Connection: close\r\n"))
	if got, _ := resp.headerValue("Connection"); got != "close" {
		t.Errorf("Connection = %q, want close", got)
	}
	if len(resp.chunks) < 21 {
		t.Errorf("%d chunks, want the whole stream", len(resp.chunks))
	}
	c.expectClosed(t)
}

func TestHTTP10StreamEndsWithConnection(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	c := n.dial(t)
	defer c.close()
	request := strings.Replace(rawRequest(http.MethodPost, routeChat, n.addr, chatBody, ""),
		"HTTP/1.1", "HTTP/1.0", 1)
	resp := c.roundTrip(t, request)
	if resp.statusLine != "HTTP/1.0 200 OK" {
		t.Errorf("status line = %q, want HTTP/1.0 200 OK", resp.statusLine)
	}
	if resp.chunked {
		t.Error("HTTP/1.0 response is chunked")
	}
	lines := ndjsonLines(resp.body)
	if len(lines) < 21 || !bytes.Contains(lines[len(lines)-1], []byte(`"done":true`)) {
		t.Errorf("body has %d lines and ends with %q, want the whole stream", len(lines), lines[len(lines)-1])
	}
}

func TestClosedClientLeavesOtherStreams(t *testing.T) {
	n := startNode(t, ollamasim.Config{TokensPerSec: 200})
	leaving, staying := n.dial(t), n.dial(t)
	defer staying.close()
	leaving.send(t, rawRequest(http.MethodPost, routeChat, n.addr, chatBody, ""))
	staying.send(t, rawRequest(http.MethodPost, routeChat, n.addr, chatBody, ""))

	head := leaving.readHead(t)
	for range 2 {
		if _, ok := leaving.nextChunk(t, head); !ok {
			t.Fatal("stream ended after fewer than 2 chunks")
		}
	}
	leaving.close()

	resp := staying.readResponse(t, false)
	lines := ndjsonLines(resp.body)
	if len(lines) < 21 || !bytes.Contains(lines[len(lines)-1], []byte(`"done":true`)) {
		t.Errorf("other stream has %d lines and ends with %q, want the whole stream",
			len(lines), lines[len(lines)-1])
	}
	n.waitStats(t, "the closed stream to count as cancelled", func(st ollamasim.Stats) bool {
		return st.Cancelled == 1 && st.Active == 0
	})
}

// smallSendBuffers gives every accepted connection a small send buffer.
type smallSendBuffers struct {
	net.Listener
}

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		c.(*net.TCPConn).SetWriteBuffer(2048)
	}
	return c, err
}

func TestStalledClientLosesStream(t *testing.T) {
	n := startNodeWith(t, ollamasim.Config{TokensPerSec: 2000, MinTokens: 400, MaxTokens: 400},
		func(ln net.Listener) net.Listener { return smallSendBuffers{ln} })

	stalled := n.dial(t)
	defer stalled.close()
	stalled.nc.(*net.TCPConn).SetReadBuffer(2048)
	stalled.send(t, rawRequest(http.MethodPost, routeChat, n.addr, chatBody, ""))

	resp := n.do(t, http.MethodPost, routeChat, chatBody)
	if lines := ndjsonLines(resp.body); len(lines) != 401 {
		t.Errorf("the reading client got %d lines, want 400 tokens and the final line", len(lines))
	}
	n.waitStats(t, "the stalled stream to be dropped", func(st ollamasim.Stats) bool {
		return st.Cancelled == 1 && st.Active == 0
	})
	if got := n.srv.stats.stalled.Load(); got != 1 {
		t.Errorf("%d streams counted as stalled, want 1", got)
	}
}

func TestStreamsRunConcurrently(t *testing.T) {
	const streams = 50
	n := startNode(t, ollamasim.Config{Parallel: streams})
	client := httpClient(t)
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	start := time.Now()
	for range streams {
		wg.Go(func() {
			resp, err := client.Post(n.url+routeOpenAIChat, "application/json", strings.NewReader(openAIBody))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				errs <- err
			} else if !bytes.HasSuffix(body, []byte("data: [DONE]\n\n")) {
				errs <- fmt.Errorf("stream ends with %q, want [DONE]", body[max(0, len(body)-40):])
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if elapsed := time.Since(start); elapsed > time.Second {
		t.Errorf("%d streams of at most 40 tokens at 400 tokens/s took %v, want them in parallel",
			streams, elapsed)
	}
}

func TestBusyNodeRejectsWith503(t *testing.T) {
	cfg := ollamasim.Config{Parallel: 1, MaxQueue: -1, TokensPerSec: 50}
	n := startNode(t, cfg)
	ref, refNode := referenceServer(t, cfg)
	refAddr := ref.Listener.Addr().String()

	for _, tc := range []struct{ path, body string }{
		{routeChat, chatBody},
		{routeOpenAIChat, openAIBody},
	} {
		t.Run(tc.path, func(t *testing.T) {
			// Occupy the one slot of each node, once the last subtest's
			// streams have given it back.
			n.waitStats(t, "a free slot", func(st ollamasim.Stats) bool { return st.Active == 0 })
			waitUntil(t, "a free slot on ollamasim", func() bool { return refNode.Stats().Active == 0 })
			first, refFirst := n.dial(t), dialAddr(t, refAddr)
			defer first.close()
			defer refFirst.close()
			first.send(t, rawRequest(http.MethodPost, tc.path, n.addr, tc.body, ""))
			refFirst.send(t, rawRequest(http.MethodPost, tc.path, refAddr, tc.body, ""))
			first.readHead(t)
			refFirst.readHead(t)

			got := n.do(t, http.MethodPost, tc.path, tc.body)
			c := dialAddr(t, refAddr)
			want := c.roundTrip(t, rawRequest(http.MethodPost, tc.path, refAddr, tc.body, ""))
			c.close()
			if got.status != http.StatusServiceUnavailable || want.status != http.StatusServiceUnavailable {
				t.Fatalf("status = %d, ollamasim's %d, want 503", got.status, want.status)
			}
			if !bytes.Equal(got.body, want.body) {
				t.Errorf("body = %s, want ollamasim's %s", got.body, want.body)
			}
			if !slices.Equal(got.headerNames(), want.headerNames()) {
				t.Errorf("header = %q, want ollamasim's %q", got.header, want.header)
			}
			gotType, _ := got.headerValue("Content-Type")
			wantType, _ := want.headerValue("Content-Type")
			if gotType != wantType {
				t.Errorf("Content-Type = %q, want %q", gotType, wantType)
			}
		})
	}
	if got, want := n.mergedStats(t).Rejected, refNode.Stats().Rejected; got != want {
		t.Errorf("/_sim/stats counts %d rejections, ollamasim %d", got, want)
	}
}

func TestQueuedStreamStartsWhenSlotFrees(t *testing.T) {
	n := startNode(t, ollamasim.Config{Parallel: 1, MaxQueue: 1})
	first, second := n.dial(t), n.dial(t)
	defer first.close()
	defer second.close()
	first.send(t, rawRequest(http.MethodPost, routeChat, n.addr, chatBody, ""))
	first.readHead(t)
	second.send(t, rawRequest(http.MethodPost, routeChat, n.addr, chatBody, ""))
	n.waitStats(t, "the second stream to wait", func(st ollamasim.Stats) bool { return st.Waiting == 1 })

	if third := n.do(t, http.MethodPost, routeChat, chatBody); third.status != http.StatusServiceUnavailable {
		t.Errorf("third stream: status %d, want 503 with one slot and a queue of one", third.status)
	}
	resp := second.readResponse(t, false)
	lines := ndjsonLines(resp.body)
	var final api.ChatResponse
	if err := json.Unmarshal(lines[len(lines)-1], &final); err != nil || !final.Done {
		t.Fatalf("queued stream ended with %q, want the final line", lines[len(lines)-1])
	}
	if final.LoadDuration < 40*time.Millisecond {
		t.Errorf("load_duration = %v, want the wait for the first stream, 50ms or more", final.LoadDuration)
	}
}

func TestQueuedStreamLeavesWhenClientCloses(t *testing.T) {
	// At 50 tokens per second the first stream lasts 0.4s or more.
	n := startNode(t, ollamasim.Config{Parallel: 1, MaxQueue: 1, TokensPerSec: 50})
	first, second := n.dial(t), n.dial(t)
	defer first.close()
	first.send(t, rawRequest(http.MethodPost, routeChat, n.addr, chatBody, ""))
	first.readHead(t)
	second.send(t, rawRequest(http.MethodPost, routeChat, n.addr, chatBody, ""))
	n.waitStats(t, "the second stream to wait", func(st ollamasim.Stats) bool { return st.Waiting == 1 })

	second.close()
	n.waitStats(t, "the second stream to leave the queue", func(st ollamasim.Stats) bool {
		return st.Waiting == 0 && st.Cancelled == 1 && st.Active == 1
	})
}

func TestStampedNodeGivesSSELatency(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	res := loadgen.RunStreams(context.Background(), loadgen.StreamLoad{
		URLs:   []string{n.url},
		Path:   routeOpenAIChat,
		Body:   []byte(`{"model":"llama3:8b","stream":true,"messages":[{"role":"user","content":"hi"}]}`),
		Format: loadgen.SSE, Streams: 2, Ramp: 20 * time.Millisecond, Duration: 300 * time.Millisecond,
	})
	if res.Errors != 0 {
		t.Fatalf("errors = %d, first: %s", res.Errors, res.FirstError)
	}
	if res.ChunkLatency.Count == 0 {
		t.Fatal("no chunk latency sample from sent_at")
	}
	if res.ChunkLatency.P50 < 0 || res.ChunkLatency.P50 > 100*time.Millisecond {
		t.Errorf("chunk latency p50 = %v, want between 0 and 100ms on loopback", res.ChunkLatency.P50)
	}
}
