package proxy

import "bytes"

// finalStats are the accounting fields of a response's final object:
// Ollama's done object, or an OpenAI object with usage.
type finalStats struct {
	usage bool // the object has an OpenAI usage object
	done  bool // the object is Ollama's final one
	// embed is set for Ollama's /api/embed response, which has token
	// counts but no done member.
	embed            bool
	promptTokens     int64
	completionTokens int64
	// Ollama's timings in nanoseconds.
	loadNs, totalNs, evalNs int64
}

// scanFinal reads the accounting fields of a final object in one pass over
// its quotes, without parsing it. The object of a non-streamed response
// carries the whole generated text and, from /api/generate, the context token
// array, which a parse would walk for a handful of numbers. In valid JSON
// a quoted name followed by a colon is always a key, because every quote
// inside a string is escaped.
//
// The pass runs from the end. Ollama and OpenAI write the accounting
// fields after the message or the choices, so the pass stops once it has
// them and does not walk the text. A key that occurs more than once counts
// at its last place: the top-level field, not a key of the same name in a
// tool call's arguments.
func scanFinal(b []byte) finalStats {
	var st finalStats
	var seen [numFinalKeys]bool
	var vals [numFinalKeys]int64
	usageObject, doneTrue := false, false
	for end := len(b); end > 0; {
		q := bytes.LastIndexByte(b[:end], '"')
		if q < 0 {
			break
		}
		end = q
		k, v := matchKey(b, q+1)
		if k < 0 || seen[k] || (k == keyUsage && seen[keyDone]) {
			// The last of "done" and "usage" in the object decides its kind.
			continue
		}
		seen[k] = true
		switch k {
		case keyUsage:
			usageObject = v < len(b) && b[v] == '{'
		case keyDone:
			doneTrue = bytes.HasPrefix(b[v:], []byte("true"))
		default:
			vals[k] = intValue(b, v)
		}
		if usageObject || (seen[keyDone] && seen[keyPromptEvalCount] && seen[keyEvalCount] &&
			seen[keyEvalDuration] && seen[keyLoadDuration] && seen[keyTotalDuration]) {
			// Every count of the object is read, and what remains is
			// the text before them.
			break
		}
	}
	switch {
	case usageObject:
		st.usage = true
		st.promptTokens = vals[keyPromptTokens]
		st.completionTokens = vals[keyCompletionTokens]
		if st.completionTokens == 0 {
			// The Responses API names them input and output tokens.
			st.completionTokens = vals[keyOutputTokens]
			st.promptTokens += vals[keyInputTokens]
		}
	case !seen[keyDone] && seen[keyPromptEvalCount]:
		st.embed = true
		st.promptTokens = vals[keyPromptEvalCount]
	case doneTrue:
		st.done = true
		st.promptTokens = vals[keyPromptEvalCount]
		st.completionTokens = vals[keyEvalCount]
		st.evalNs = vals[keyEvalDuration]
		st.loadNs = vals[keyLoadDuration]
		st.totalNs = vals[keyTotalDuration]
	}
	return st
}

// The keys that scanFinal reads, by index into finalKeys.
const (
	keyUsage = iota
	keyDone
	keyPromptTokens
	keyCompletionTokens
	keyInputTokens
	keyOutputTokens
	keyPromptEvalCount
	keyEvalCount
	keyEvalDuration
	keyLoadDuration
	keyTotalDuration
	numFinalKeys
)

var finalKeys = [numFinalKeys]string{
	keyUsage:            `usage"`,
	keyDone:             `done"`,
	keyPromptTokens:     `prompt_tokens"`,
	keyCompletionTokens: `completion_tokens"`,
	keyInputTokens:      `input_tokens"`,
	keyOutputTokens:     `output_tokens"`,
	keyPromptEvalCount:  `prompt_eval_count"`,
	keyEvalCount:        `eval_count"`,
	keyEvalDuration:     `eval_duration"`,
	keyLoadDuration:     `load_duration"`,
	keyTotalDuration:    `total_duration"`,
}

// keysByFirst lists the indexes of finalKeys by their first byte, so that
// most quotes are ruled out by one lookup.
var keysByFirst = func() (t [256][]int) {
	for k, name := range finalKeys {
		t[name[0]] = append(t[name[0]], k)
	}
	return t
}()

// matchKey reports which of finalKeys starts at b[i], just after an
// opening quote, and the index of its value. It returns -1 when none does
// or no colon follows.
func matchKey(b []byte, i int) (key, value int) {
	if i >= len(b) {
		return -1, 0
	}
	for _, k := range keysByFirst[b[i]] {
		name := finalKeys[k]
		if !bytes.HasPrefix(b[i:], []byte(name)) {
			continue
		}
		j := skipSpace(b, i+len(name))
		if j < len(b) && b[j] == ':' {
			return k, skipSpace(b, j+1)
		}
		return -1, 0
	}
	return -1, 0
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// intValue returns the integer at b[i], or 0 when the value there is not
// an integer that fits in an int64.
func intValue(b []byte, i int) int64 {
	neg := i < len(b) && b[i] == '-'
	if neg {
		i++
	}
	var n int64
	digits := 0
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		if n > (1<<63-1)/10 {
			return 0
		}
		n = n*10 + int64(b[i]-'0')
		digits++
	}
	if digits == 0 || n < 0 {
		return 0
	}
	if i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E') {
		return 0 // not an integer
	}
	if neg {
		return -n
	}
	return n
}
