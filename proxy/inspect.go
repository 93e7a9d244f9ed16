package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/valyala/fastjson"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/internal/wire"
)

// fields are the values the proxy reads from a request body, and the
// routing state derived from them. The proxy forwards the body unchanged
// unless body is set.
type fields struct {
	// model is wire.ModelKey of rawModel, under which the proxy compares
	// model names.
	model string
	// rawModel is the name as the client sent it, for error messages. The
	// node gets the body with this name.
	rawModel string
	stream   bool
	// asSent relays a streamed response as a stream whatever the request
	// asked for. It is set on paths the proxy has no route for, whose
	// request fields it does not know.
	asSent bool
	// unload is keep_alive 0: Ollama unloads the model after the request.
	unload bool
	// preload is a request to which Ollama responds by loading the model:
	// a generate without prompt, a chat without messages, an /api/embed
	// without input or an /api/embeddings without prompt (see isPreload).
	preload bool
	numCtx  int
	// reserveTokens is the number of tokens that admit reserves: the
	// output limit that the route reads, or an estimate of the input
	// tokens of an embedding request. 0 means default_token_estimate.
	reserveTokens int64
	// promptTokens is the estimate of a generation request's prompt that
	// admit reserves besides reserveTokens, when inspect was asked for it.
	promptTokens int64
	// includeUsage is stream_options.include_usage on the OpenAI routes.
	includeUsage bool
	// pinned, when set, is the only node the request may go to.
	pinned *balancer.Node
	// refresh requests a refresh of the node's inventory after a success.
	refresh bool
	// affinity identifies the conversation of a chat, 0 for none.
	affinity uint64
	// body, when set, is sent to the node in place of the client's body.
	body []byte
	// store, when set, collects a streamed response for the cache.
	store *pendingStore
}

// inspect reads the fields routing needs from body, and with prompt set
// also estimates the prompt's tokens. It returns an error naming the
// problem when the body is not a JSON object or its model is not a string.
func inspect(p *fastjson.Parser, r route, body []byte, prompt bool) (fields, error) {
	var f fields
	v, err := parseObject(p, body)
	if err != nil {
		return f, err
	}
	if f.rawModel, err = modelField(v, r); err != nil {
		return f, err
	}
	f.model = wire.ModelKey(f.rawModel)
	f.stream = streamFlag(v, r)
	f.unload = isZeroKeepAlive(v.Get("keep_alive"))
	f.preload = isPreload(v, r.name)
	if r.name == "/api/chat" || r.name == "/v1/chat/completions" {
		f.affinity = conversationKey(f.model, v.GetArray("messages"))
	}
	if opts := v.Get("options"); opts != nil {
		f.numCtx = opts.GetInt("num_ctx")
	}
	f.reserveTokens = reserveTokens(v, r)
	if prompt {
		f.promptTokens = promptTokens(v)
	}
	if r.compat() {
		f.includeUsage = v.GetBool("stream_options", "include_usage")
	}
	return f, nil
}

// reserveTokens returns the tokens to reserve for a request of route r.
// That is the output limit that Ollama reads on r: options.num_predict on
// its own routes, and on the /v1 routes the field that its middleware
// maps to num_predict. An embedding request generates nothing, so it
// reserves an estimate of its input instead.
func reserveTokens(v *fastjson.Value, r route) int64 {
	switch r.name {
	case "/api/embed", "/v1/embeddings":
		return inputTokens(v.Get("input"))
	case "/api/embeddings":
		return inputTokens(v.Get("prompt"))
	case "/v1/responses":
		return tokenCount(v.Get("max_output_tokens"))
	case "/v1/completions", "/v1/messages":
		return tokenCount(v.Get("max_tokens"))
	case "/v1/chat/completions":
		// NOTE: Ollama v0.17.4 maps only max_tokens to num_predict and
		// ignores max_completion_tokens, OpenAI's newer name for it, so
		// a request with only the latter may generate more than it
		// reserves. Settling charges the tokens used either way.
		if n := tokenCount(v.Get("max_tokens")); n > 0 {
			return n
		}
		return tokenCount(v.Get("max_completion_tokens"))
	}
	return tokenCount(v.Get("options", "num_predict"))
}

// inputTokens estimates the prompt tokens of an embedding input: a string,
// an array of strings, or on /v1/embeddings token ids, an array of them or
// an array of such arrays. A text counts a token per four bytes, a rough
// ratio for English text, and at least one. A token id counts one. The
// result is at least 1, because 0 would reserve default_token_estimate.
func inputTokens(v *fastjson.Value) int64 {
	var n int64
	switch {
	case v == nil:
	case v.Type() == fastjson.TypeString:
		n = int64(len(v.GetStringBytes())+3) / 4
	case v.Type() == fastjson.TypeNumber:
		n = 1
	case v.Type() == fastjson.TypeArray:
		for _, item := range v.GetArray() {
			n += inputTokens(item)
		}
	}
	return max(n, 1)
}

// promptTokens estimates the input tokens of a generation request: a
// token per four bytes of the text in its string fields, at the ratio
// that inputTokens uses. Fields that are not prompt text are left out: the
// model name and keep_alive, and images, audio and files, which travel as
// base64 or URLs and which a model counts in its own way.
// NOTE: a request that sends mostly images reserves less than it uses,
// and settling then charges the difference.
func promptTokens(v *fastjson.Value) int64 {
	return (promptBytes(v) + 3) / 4
}

// promptSkip lists the fields whose strings promptBytes leaves out.
var promptSkip = map[string]bool{
	"model": true, "keep_alive": true,
	// Ollama's images, OpenAI's image_url, input_audio and file_data, and
	// Anthropic's source of an image or document.
	"images": true, "image_url": true, "input_audio": true, "file_data": true, "source": true,
}

func promptBytes(v *fastjson.Value) int64 {
	var n int64
	switch v.Type() {
	case fastjson.TypeString:
		n = int64(len(v.GetStringBytes()))
	case fastjson.TypeArray:
		for _, item := range v.GetArray() {
			n += promptBytes(item)
		}
	case fastjson.TypeObject:
		o, _ := v.Object()
		o.Visit(func(key []byte, item *fastjson.Value) {
			if !promptSkip[string(key)] {
				n += promptBytes(item)
			}
		})
	}
	return n
}

// parseObject parses a request body, which must be one JSON object. It
// returns an error naming the problem, in the same words on every route.
func parseObject(p *fastjson.Parser, body []byte) (*fastjson.Value, error) {
	if len(body) == 0 {
		return nil, errMissingBody
	}
	v, err := p.ParseBytes(body)
	if err != nil && strings.HasPrefix(err.Error(), "unexpected tail") {
		// Ollama decodes the first JSON value of a body and ignores what
		// follows it, so the proxy reads the same value.
		// NOTE: the prefix is fastjson's message as of v1.6, not an API.
		// TestDataAfterTheBodyIgnored fails if an upgrade changes it.
		v, err = firstValue(body)
	}
	if err != nil {
		return nil, syntaxError(body, err)
	}
	switch v.Type() {
	case fastjson.TypeObject:
	case fastjson.TypeNull:
		// Go's JSON decoder leaves a struct unchanged for null, so Ollama
		// reads a null body as one with no fields.
		var a fastjson.Arena
		return a.NewObject(), nil
	default:
		return nil, &bodyTypeError{fmt.Sprintf("invalid JSON: want an object, got %s", v.Type())}
	}
	key, folded := duplicateKey(v)
	if key != "" {
		// Ollama's JSON decoder takes the last value and this reader the
		// first, so the proxy would route, check and bill another request
		// than the node runs. The decoder matches keys in any case, so
		// "model" and "Model" are the same key.
		return nil, fmt.Errorf("invalid JSON: duplicate key %q", key)
	}
	if folded {
		foldKeys(v, readKeys)
	}
	if opts := v.Get("options"); opts != nil {
		// The same holds for options such as num_ctx, which placement reads.
		key, folded := duplicateKey(opts)
		if key != "" {
			return nil, fmt.Errorf("invalid JSON: duplicate key %q in options", key)
		}
		if folded {
			foldKeys(opts, readOptionKeys)
		}
	}
	return v, nil
}

// firstValue parses the first JSON value of body, which has more after it.
// The value keeps its own parser, since bodies with a tail are rare.
func firstValue(body []byte) (*fastjson.Value, error) {
	var sc fastjson.Scanner
	sc.InitBytes(body)
	if !sc.Next() {
		return nil, sc.Error()
	}
	return sc.Value(), nil
}

// modelField returns the model that a request body names in "model" or,
// on the routes where Ollama still accepts it from older clients, in
// "name". It returns "" when neither is set.
func modelField(v *fastjson.Value, r route) (string, error) {
	model, err := stringField(v, "model")
	if err != nil {
		return "", err
	}
	switch r.name {
	case "/api/show", "/api/pull", "/api/push", "/api/delete", "/api/create":
		// Ollama decodes both fields, so a name of another type fails
		// even next to a model.
		name, err := stringField(v, "name")
		if err != nil || model != "" {
			return model, err
		}
		return name, nil
	}
	return model, nil
}

// stringField returns the string at key, or "" when key is missing or
// null. Any other type is an error, as Ollama's JSON decoder rejects it.
func stringField(v *fastjson.Value, key string) (string, error) {
	field := v.Get(key)
	if field == nil || field.Type() == fastjson.TypeNull {
		return "", nil
	}
	if field.Type() != fastjson.TypeString {
		return "", &bodyTypeError{fmt.Sprintf("invalid %s: want a string", key)}
	}
	return string(field.GetStringBytes()), nil
}

// streamFlag applies each API's default. Ollama streams unless "stream"
// is false, and the /v1 routes stream only when it is true.
func streamFlag(v *fastjson.Value, r route) bool {
	if !r.streams {
		return false
	}
	s := v.Get("stream")
	if s == nil || s.Type() == fastjson.TypeNull {
		return !r.compat()
	}
	return s.Type() == fastjson.TypeTrue
}

// isZeroKeepAlive reports whether keep_alive is 0 or a zero duration such
// as "0", "0s" or "0m". Ollama then unloads the model once the request is
// done.
func isZeroKeepAlive(v *fastjson.Value) bool {
	if v == nil {
		return false
	}
	switch v.Type() {
	case fastjson.TypeNumber:
		return v.GetFloat64() == 0
	case fastjson.TypeString:
		s := string(v.GetStringBytes())
		if s == "0" {
			return true
		}
		d, err := time.ParseDuration(s)
		return err == nil && d == 0
	}
	return false
}

// isPreload reports whether a request on route name only loads the model.
// Ollama's embedding handlers (server/routes.go, v0.17.4) load the model
// and return no vector for an /api/embed input that is missing, null, ""
// or [], and for an /api/embeddings prompt that is missing or "". Its
// /v1/embeddings rejects a missing input and embeds "" as one input.
func isPreload(v *fastjson.Value, name string) bool {
	switch name {
	case "/api/generate":
		return len(v.GetStringBytes("prompt")) == 0 && v.Get("images") == nil
	case "/api/chat":
		m := v.Get("messages")
		if m == nil {
			return true
		}
		a, err := m.Array()
		return err == nil && len(a) == 0
	case "/api/embed":
		input := v.Get("input")
		switch {
		case input == nil || input.Type() == fastjson.TypeNull:
			return true
		case input.Type() == fastjson.TypeString:
			return len(input.GetStringBytes()) == 0
		case input.Type() == fastjson.TypeArray:
			return len(input.GetArray()) == 0
		}
		return false
	case "/api/embeddings":
		return len(v.GetStringBytes("prompt")) == 0
	}
	return false
}

// conversationKey hashes the model, the system messages before the first
// user message, and that user message, which every later turn repeats.
// Turns of one conversation therefore share the key, and so the node whose
// prompt cache contains their common prefix. It returns 0 when there is no
// user message.
func conversationKey(model string, messages []*fastjson.Value) uint64 {
	h := fnv.New64a()
	h.Write([]byte(model))
	var buf []byte
	for _, m := range messages {
		role := m.GetStringBytes("role")
		if string(role) != "system" && string(role) != "user" {
			continue
		}
		buf = append(buf[:0], 0)
		buf = append(buf, role...)
		buf = append(buf, 0)
		if c := m.Get("content"); c != nil {
			buf = c.MarshalTo(buf)
		}
		h.Write(buf)
		if string(role) == "user" {
			return h.Sum64() | 1 // never 0
		}
	}
	return 0
}

// duplicateKey returns a top-level key that the object has more than once,
// or "".
func duplicateKey(v *fastjson.Value) (dup string, folded bool) {
	obj, err := v.Object()
	if err != nil {
		return "", false
	}
	// Request bodies have a dozen top-level keys, so a quadratic scan over
	// a buffer on the stack beats a map. The client picks the number of
	// keys, though, so past the buffer the keys go to a map.
	var buf [32][]byte
	keys := buf[:0]
	var many map[string]struct{}
	var found []byte
	obj.Visit(func(k []byte, _ *fastjson.Value) {
		if found != nil {
			return
		}
		folded = folded || !lowerASCII(k)
		if many != nil {
			if !addFolded(many, k) {
				found = k
			}
			return
		}
		for _, seen := range keys {
			if string(seen) == string(k) || (folded && bytes.EqualFold(seen, k)) {
				found = k
				return
			}
		}
		if len(keys) < len(buf) {
			keys = append(keys, k)
			return
		}
		many = make(map[string]struct{}, 2*len(buf))
		for _, seen := range keys {
			addFolded(many, seen)
		}
		addFolded(many, k)
	})
	return string(found), folded
}

// addFolded adds the case-folded form of k to set and reports whether it
// was new.
func addFolded(set map[string]struct{}, k []byte) bool {
	f := string(foldCase(k))
	if _, ok := set[f]; ok {
		return false
	}
	set[f] = struct{}{}
	return true
}

// foldCase returns k with each character replaced by the smallest one
// that matches it in any case, so that two keys match under
// bytes.EqualFold exactly when their folded forms are equal. Like
// EqualFold, it reads each invalid UTF-8 byte as U+FFFD.
func foldCase(k []byte) []byte {
	out := make([]byte, 0, len(k))
	for len(k) > 0 {
		r, size := utf8.DecodeRune(k)
		k = k[size:]
		if r < utf8.RuneSelf {
			if 'a' <= r && r <= 'z' {
				r -= 'a' - 'A'
			}
			out = append(out, byte(r))
			continue
		}
		least := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			least = min(least, f)
		}
		out = utf8.AppendRune(out, least)
	}
	return out
}

// lowerASCII reports whether k has only ASCII bytes and no upper case
// letter. Two such keys match in any case only when they are equal.
func lowerASCII(k []byte) bool {
	for _, c := range k {
		if c >= utf8.RuneSelf || ('A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}

// readKeys are the top-level keys of request bodies that the proxy reads,
// and readOptionKeys those of "options", in the form its lookups use.
var (
	readKeys = []string{"model", "name", "from", "modelfile", "files", "adapters", "source",
		"destination", "stream", "keep_alive", "options", "messages", "prompt", "images",
		"max_tokens", "max_completion_tokens", "max_output_tokens", "stream_options", "input"}
	readOptionKeys = []string{"num_ctx", "num_predict"}
)

// foldKeys renames each key of the object v that matches one of names in
// another case, such as "Model", to that name. Go's JSON decoder, which
// Ollama uses, matches keys without regard to case, so the node reads
// such a key as the field, and the proxy must route and check the same
// value. It runs after duplicateKey, so no two keys of v match.
func foldKeys(v *fastjson.Value, names []string) {
	obj, err := v.Object()
	if err != nil {
		return
	}
	var renames [][2]string
	obj.Visit(func(k []byte, _ *fastjson.Value) {
		if lowerASCII(k) {
			return
		}
		for _, name := range names {
			if bytes.EqualFold(k, []byte(name)) {
				renames = append(renames, [2]string{string(k), name})
				return
			}
		}
	})
	for _, r := range renames {
		value := obj.Get(r[0])
		obj.Del(r[0])
		obj.Set(r[1], value)
	}
}

// shortParseError returns fastjson's message for err with the middle of its
// chain of contexts left out. fastjson adds one "cannot parse ..." context
// per level of nesting, so a deeply nested body would otherwise get an
// error of many kilobytes.
//
// NOTE: fastjson rejects nesting deeper than 300 levels, which Go's
// encoding/json, and so Ollama, accepts.
// syntaxError returns the error for a body that fastjson failed to parse
// with err. Ollama decodes bodies with Go's encoding/json, so a body of up
// to maxGoDecode bytes is decoded again with it to give Ollama's message,
// such as "invalid character 'b' looking for beginning of object key
// string" or "unexpected EOF", and a body of white space alone gets
// Ollama's "missing request body".
func syntaxError(body []byte, err error) error {
	if len(body) <= maxGoDecode {
		var v any
		goErr := json.NewDecoder(bytes.NewReader(body)).Decode(&v)
		if errors.Is(goErr, io.EOF) {
			return errMissingBody
		}
		if goErr != nil {
			return &bodySyntaxError{goErr.Error()}
		}
	}
	return &bodySyntaxError{"invalid JSON: " + shortParseError(err)}
}

// bodySyntaxError is the error of a body that is empty or not JSON at
// all, which Ollama's decoder rejects too. Its message is Go's, as from
// Ollama, except for a body over maxGoDecode, which gets fastjson's after
// "invalid JSON: ".
type bodySyntaxError struct{ msg string }

func (e *bodySyntaxError) Error() string { return e.msg }

// bodyTypeError is the error of a body, or of a field that the proxy
// reads, whose JSON type is not the one that Ollama's request type has, or
// of a value that Ollama rejects before it looks a model up. Ollama
// rejects such a body too, and writeBodyError sends its response.
type bodyTypeError struct{ msg string }

func (e *bodyTypeError) Error() string { return e.msg }

// errMissingBody is Ollama's error for an empty body.
var errMissingBody error = &bodySyntaxError{"missing request body"}

// maxGoDecode bounds the bodies that syntaxError decodes again, because
// encoding/json is many times slower than fastjson.
const maxGoDecode = 1 << 20

func shortParseError(err error) string {
	const sep = ": cannot parse "
	parts := strings.Split(err.Error(), sep)
	if len(parts) <= 4 {
		return err.Error()
	}
	return parts[0] + sep + parts[1] + ": …" + sep + strings.Join(parts[len(parts)-2:], sep)
}

// tokenCount reads a token count such as num_predict. Ollama converts any
// JSON number to an integer, so 2000.0 and 2e3 count as 2000, and a number
// beyond int64 counts as the largest int64 rather than as unset. It
// returns 0 for a missing value or one that is not a number.
func tokenCount(v *fastjson.Value) int64 {
	if v == nil || v.Type() != fastjson.TypeNumber {
		return 0
	}
	if n, err := v.Int64(); err == nil {
		return n
	}
	f := v.GetFloat64()
	switch {
	case f >= math.MaxInt64:
		return math.MaxInt64
	case f <= math.MinInt64:
		return math.MinInt64
	}
	return int64(f)
}
