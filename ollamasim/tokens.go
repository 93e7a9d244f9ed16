package ollamasim

import (
	"hash/fnv"
	"math"
	"math/rand/v2"
	"strings"
	"unicode"
	"unicode/utf8"
)

// vocabulary contains the words of the generated text, which is nonsense
// like the output of the tiny models in Ollama's own tests.
var vocabulary = []string{
	"river", "stone", "quiet", "morning", "garden", "lantern", "bridge", "meadow",
	"sparrow", "harbor", "window", "silver", "golden", "forest", "valley", "candle",
	"thunder", "willow", "orchard", "pebble", "ember", "cloud", "rain", "snow",
	"wind", "tower", "road", "field", "lake", "hill", "moon", "star",
	"sun", "sea", "owl", "fox", "wolf", "bear", "deer", "heron",
	"walks", "sings", "waits", "dreams", "finds", "hears", "sees", "runs",
	"sleeps", "drifts", "glows", "turns", "rests", "calls", "follows", "carries",
	"old", "new", "small", "bright", "dark", "gentle", "brave", "curious",
	"warm", "cold", "soft", "slow", "green", "blue", "red", "happy",
	"under", "over", "near", "into", "onto", "beyond", "across", "with",
	"the", "a", "an", "of", "and", "by", "for", "at",
	"always", "never", "sometimes", "slowly", "softly", "today", "tomorrow", "again",
}

// spacedVocabulary contains the words of vocabulary with a leading space, as
// they follow another piece, so that drawing a word allocates nothing.
var spacedVocabulary = func() []string {
	spaced := make([]string, len(vocabulary))
	for i, w := range vocabulary {
		spaced[i] = " " + w
	}
	return spaced
}()

// tokenID maps a piece of text to a token ID. The mapping is a hash, so the
// same piece has the same ID in a prompt and in generated text, and a
// conversation sent back with the model's replies matches the prompt cache.
func tokenID(piece string) int {
	h := fnv.New32a()
	h.Write([]byte(piece))
	return int(h.Sum32()%32000) + 3 // IDs 0 to 2 are special tokens in llama vocabularies
}

// tokenize returns the token IDs of the pieces of text.
func tokenize(text string) []int {
	pieces := splitPieces(text)
	ids := make([]int, len(pieces))
	for i, p := range pieces {
		ids[i] = tokenID(p)
	}
	return ids
}

// splitPieces splits text into pieces: words with at most one leading space,
// and single other characters. tokenize maps each piece to one token.
func splitPieces(text string) []string {
	var pieces []string
	for len(text) > 0 {
		n := pieceLen(text)
		pieces = append(pieces, text[:n])
		text = text[n:]
	}
	return pieces
}

// pieceLen returns the length in bytes of the piece text starts with.
func pieceLen(text string) int {
	if n := specialTokenLen(text); n > 0 {
		return n
	}
	start := 0
	if text[0] == ' ' && len(text) > 1 {
		if r, _ := utf8.DecodeRuneInString(text[1:]); isWordRune(r) {
			start = 1
		}
	}
	r, size := utf8.DecodeRuneInString(text[start:])
	if !isWordRune(r) {
		return start + size
	}
	n := start + size
	for n < len(text) {
		r, size = utf8.DecodeRuneInString(text[n:])
		if !isWordRune(r) {
			break
		}
		n += size
	}
	return n
}

// specialTokenLen returns the length of a template marker such as
// "<|im_start|>" at the start of text, or 0. Like real tokenizers, the
// simulation counts a marker as one token.
func specialTokenLen(text string) int {
	if !strings.HasPrefix(text, "<|") {
		return 0
	}
	end := strings.Index(text[2:min(len(text), 32)], "|>") + 2
	if end <= 2 {
		return 0 // no closing "|>", or an empty name as in "<||>"
	}
	for _, r := range text[2:end] {
		if !isWordRune(r) && r != '_' {
			return 0
		}
	}
	return end + 2
}

func isWordRune(r rune) bool {
	return unicode.IsLetter(r) || unicode.IsDigit(r)
}

// tokenStream produces the pieces of one generated text. Every piece tokenizes to
// exactly one token, so the token count equals the piece count.
type tokenStream struct {
	rng     *rand.Rand
	pieces  []string // pending fixed pieces: the JSON wrapper
	words   int      // words left before the text ends on its own
	closing []string // pieces that end a JSON text
	last    string
}

// newTokenStream starts a text of minTokens to maxTokens words, wrapped in
// a JSON object when asJSON is set (a request with "format").
func newTokenStream(seed uint64, minTokens, maxTokens int, asJSON bool) *tokenStream {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	ts := &tokenStream{rng: rng, words: minTokens + rng.IntN(maxTokens-minTokens+1)}
	if asJSON {
		ts.pieces = []string{"{", `"`, "response", `"`, ":", `"`}
		ts.closing = []string{`"`, "}"}
	}
	return ts
}

// next returns the next piece and whether it ends the text.
func (ts *tokenStream) next() (piece string, last bool) {
	switch {
	case len(ts.pieces) > 0:
		piece, ts.pieces = ts.pieces[0], ts.pieces[1:]
	case ts.words > 1:
		ts.words--
		piece = ts.word()
	case ts.words == 1:
		ts.words = 0
		piece = "."
		ts.pieces = ts.closing
	}
	ts.last = piece
	return piece, ts.words == 0 && len(ts.pieces) == 0
}

func (ts *tokenStream) word() string {
	if ts.last != "." && ts.last != "" && ts.rng.IntN(9) == 0 {
		return "."
	}
	return spacedVocabulary[ts.rng.IntN(len(spacedVocabulary))]
}

// TokenStream produces the pieces of one generated text, the way the node
// streams a completion: words with a leading space and an occasional ".",
// ending with ".". Each piece is one token. A TokenStream is not safe for
// concurrent use.
type TokenStream struct {
	stream *tokenStream
}

// NewTokenStream starts the text of a completion that is not deterministic:
// its seed comes from the node's generator, and its length is
// Config.MinTokens to Config.MaxTokens pieces.
func (s *Server) NewTokenStream() *TokenStream {
	return &TokenStream{stream: newTokenStream(s.randomSeed(), s.cfg.MinTokens, s.cfg.MaxTokens, false)}
}

// Next returns the next piece and whether it ends the text. Calls after the
// last piece return "" and true.
func (t *TokenStream) Next() (piece string, last bool) {
	return t.stream.next()
}

// ChatMessage is one message of a chat prompt.
type ChatMessage struct {
	Role    string
	Content string
}

// CountChatPromptTokens returns the number of tokens of the prompt that the
// node renders from messages in a chat without tools. It is the
// prompt_eval_count of such a request when the prompt cache contains none
// of the prompt.
func CountChatPromptTokens(messages []ChatMessage) int {
	turns := make([]turn, len(messages))
	for i, m := range messages {
		turns[i] = turn{role: m.Role, content: m.Content}
	}
	return len(splitPieces(renderChat(turns, nil)))
}

// hashSeed derives a 64-bit seed from the given parts.
func hashSeed(parts ...string) uint64 {
	h := fnv.New64a()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return h.Sum64()
}

// embeddingVector returns the raw vector of text for one model: dims values
// drawn from a generator seeded by the model and the text. Ollama's legacy
// /api/embeddings returns such unnormalised values.
func embeddingVector(model, text string, dims int) []float64 {
	seed := hashSeed(model, text)
	rng := rand.New(rand.NewPCG(seed, ^seed))
	v := make([]float64, dims)
	for i := range v {
		v[i] = rng.NormFloat64()
	}
	return v
}

// normalize returns v scaled to unit length as float32, as /api/embed and
// /v1/embeddings return it.
func normalize(v []float64) []float32 {
	var sum float64
	for _, x := range v {
		sum += x * x
	}
	norm := math.Sqrt(sum)
	out := make([]float32, len(v))
	for i, x := range v {
		if norm > 0 {
			out[i] = float32(x / norm)
		}
	}
	return out
}
