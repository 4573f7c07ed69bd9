package promptscore.readahead;

import java.io.IOException;
import java.io.Serializable;
import java.math.BigDecimal;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.Iterator;
import java.util.Locale;
import java.util.Map;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonFactoryBuilder;
import com.fasterxml.jackson.core.JsonLocation;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.JsonStreamContext;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.StreamReadConstraints;
import com.fasterxml.jackson.core.StreamReadFeature;
import com.fasterxml.jackson.core.exc.StreamConstraintsException;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.api.java.function.FlatMapFunction;
import org.apache.spark.rdd.RDD;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.expressions.GenericInternalRow;
import org.apache.spark.sql.catalyst.util.ArrayBasedMapData;
import org.apache.spark.sql.catalyst.util.ArrayData;
import org.apache.spark.sql.catalyst.util.GenericArrayData;
import org.apache.spark.sql.types.ArrayType;
import org.apache.spark.sql.types.BooleanType;
import org.apache.spark.sql.types.ByteType;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.Decimal;
import org.apache.spark.sql.types.DecimalType;
import org.apache.spark.sql.types.DoubleType;
import org.apache.spark.sql.types.FloatType;
import org.apache.spark.sql.types.IntegerType;
import org.apache.spark.sql.types.LongType;
import org.apache.spark.sql.types.MapType;
import org.apache.spark.sql.types.ShortType;
import org.apache.spark.sql.types.StringType;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StructType;
import org.apache.spark.unsafe.Platform;
import org.apache.spark.unsafe.types.UTF8String;

/**
 * One JSONL line, judged in one streaming pass with Jackson's {@code JsonParser}: either the row
 * of the schema, or the reason the line is set aside and a short detail, plus the paths of the
 * fields the schema lacks.
 *
 * <p>The line's bytes are checked as UTF-8 first (strictly: no overlong forms, no encoded
 * surrogates), then tokenized once. Values are kept exactly: a number that does not fit its
 * column, overflows to infinity or underflows to zero is a reject, never rounded into range; a
 * non-string value in a string column keeps its JSON text byte for byte; duplicate keys, keys
 * that differ only in case from a column's, and lone surrogate escapes are rejects. Syntax
 * problems (not JSON, data after the object, nesting deeper than {@link #MAX_DEPTH}) win over the
 * value problems, which win over a missing required field, which wins over unknown fields.
 *
 * <p>Output row: {@code source_file, kind, reason, detail, unknown, value, parsed}; {@code value}
 * (the line's bytes) only for rejects, {@code parsed} (the record) only for {@code ok} lines.
 * One instance per task: it is not thread-safe.
 */
public final class JsonLineParser {
    /** Every reason a line is set aside, indexed by the constants below and in the order of
     *  {@code promptscore.convert.jsonl.REASONS}; docs/convert.md, "Reject reasons", says what each
     *  means and which wins when a line has several. */
    public static final String[] REASONS = {"line_too_long", "invalid_utf8", "not_json_object", "trailing_data",
        "too_deep", "schema_mismatch", "missing_required_field", "unknown_field", "duplicate_key",
        "number_out_of_range", "invalid_unicode"};
    public static final int MAX_DEPTH = 1000;
    /** Beyond this Jackson stops (memory): the line is too deep, whatever follows. */
    private static final int HARD_DEPTH = 1 << 20;

    private static final int LINE_TOO_LONG = 0, INVALID_UTF8 = 1, NOT_JSON = 2, TRAILING = 3, TOO_DEEP = 4,
        MISMATCH = 5, MISSING = 6, UNKNOWN = 7, DUPLICATE = 8, OUT_OF_RANGE = 9, INVALID_UNICODE = 10;
    private static final UTF8String[] REASON_UTF8 = new UTF8String[REASONS.length];
    private static final UTF8String OK = UTF8String.fromString("ok");
    private static final UTF8String BLANK = UTF8String.fromString("blank");
    private static final UTF8String REJECT = UTF8String.fromString("reject");
    private static final UTF8String TRUE = UTF8String.fromString("true");
    private static final UTF8String FALSE = UTF8String.fromString("false");
    private static final ArrayData NO_NAMES = new GenericArrayData(new Object[0]);
    private static final String ARRAY_STEP = new String("[]");
    private static final String MAP_STEP = new String("{}");

    static {
        for (int i = 0; i < REASONS.length; i++) {
            REASON_UTF8[i] = UTF8String.fromString(REASONS[i]);
        }
    }

    private static final JsonFactory FACTORY = new JsonFactoryBuilder()
        .streamReadConstraints(StreamReadConstraints.builder().maxNestingDepth(HARD_DEPTH)
            .maxNumberLength(Integer.MAX_VALUE).maxStringLength(Integer.MAX_VALUE).build())
        .disable(StreamReadFeature.INCLUDE_SOURCE_IN_LOCATION)
        .build();

    /** What a task needs to build its parser: serializable, sent with the task. */
    public static final class Spec implements Serializable {
        private static final long serialVersionUID = 1L;
        final StructType schema;
        final String[] required;
        final long maxLineBytes;
        final boolean strict;
        final boolean checkFields;

        Spec(StructType schema, String[] required, long maxLineBytes, boolean strict, boolean checkFields) {
            this.schema = schema;
            this.required = required;
            this.maxLineBytes = maxLineBytes;
            this.strict = strict;
            this.checkFields = checkFields;
        }

        public JsonLineParser newParser() {
            return new JsonLineParser(this);
        }
    }

    /**
     * The spec of a parse: the schema (Spark's JSON form of a struct), the required top-level
     * fields (separated by U+0000), the line limit, {@code strict} (reject unknown fields) and
     * {@code checkFields} (collect unknown fields at all).
     */
    public static Spec spec(String schemaJson, String required, long maxLineBytes, boolean strict,
                            boolean checkFields) {
        StructType schema = (StructType) DataType.fromJson(schemaJson);
        String problem = unsupported(schema, "");
        if (problem != null) {
            throw new IllegalArgumentException(problem);
        }
        String[] names = required.isEmpty() ? new String[0] : required.split("\u0000", -1);
        return new Spec(schema, names, maxLineBytes, strict, checkFields);
    }

    /** Why the parser cannot fill a column of this type (null when it can). */
    public static String unsupported(DataType t, String path) {
        if (t instanceof StructType) {
            for (StructField f : ((StructType) t).fields()) {
                String p = unsupported(f.dataType(), path.isEmpty() ? f.name() : path + "." + f.name());
                if (p != null) {
                    return p;
                }
            }
            return null;
        }
        if (t instanceof ArrayType) {
            return unsupported(((ArrayType) t).elementType(), path + "[]");
        }
        if (t instanceof MapType) {
            if (!(((MapType) t).keyType() instanceof StringType)) {
                return path + ": map keys must be string (JSON object keys are strings)";
            }
            return unsupported(((MapType) t).valueType(), path + "{}");
        }
        if (t instanceof StringType || t instanceof BooleanType || t instanceof ByteType || t instanceof ShortType
            || t instanceof IntegerType || t instanceof LongType || t instanceof FloatType
            || t instanceof DoubleType || t instanceof DecimalType) {
            return null;
        }
        return path + ": type " + t.simpleString() + " is not supported (use string, boolean, tinyint, smallint, "
            + "int, bigint, float, double, decimal, struct, array or map<string,...>)";
    }

    /** The rows of {@code lines} (each {@code source_file string, value string}) parsed: Spark's text source path. */
    public static JavaRDD<InternalRow> parseRows(RDD<InternalRow> lines, final Spec spec) {
        return lines.toJavaRDD().mapPartitions(new FlatMapFunction<Iterator<InternalRow>, InternalRow>() {
            private static final long serialVersionUID = 1L;

            @Override
            public Iterator<InternalRow> call(final Iterator<InternalRow> rows) {
                final JsonLineParser parser = spec.newParser();
                return new Iterator<InternalRow>() {
                    private UTF8String file;

                    @Override
                    public boolean hasNext() {
                        return rows.hasNext();
                    }

                    @Override
                    public InternalRow next() {
                        InternalRow in = rows.next();
                        UTF8String f = in.isNullAt(0) ? null : in.getUTF8String(0);
                        if (f == null) {
                            file = null;
                        } else if (file == null || !file.equals(f)) {
                            file = f.clone();  // the input row's buffer is reused
                        }
                        if (in.isNullAt(1)) {
                            return parser.parse(new byte[0], 0, 0, file);
                        }
                        byte[] bytes = in.getUTF8String(1).getBytes();
                        return parser.parse(bytes, 0, bytes.length, file);
                    }
                };
            }
        }, false);
    }

    // ------------------------------------------------------------------------------------------
    // The schema, compiled

    private static final int T_STRING = 0, T_BOOLEAN = 1, T_BYTE = 2, T_SHORT = 3, T_INT = 4, T_LONG = 5,
        T_FLOAT = 6, T_DOUBLE = 7, T_DECIMAL = 8, T_STRUCT = 9, T_ARRAY = 10, T_MAP = 11;

    static final class Node {
        final int type;
        final String typeName;
        final int precision;
        final int scale;
        final Node element;       // array element, map value
        final String[] names;     // struct
        final Node[] fields;
        final Map<String, Integer> index;
        final Map<String, Integer> folded;

        Node(DataType t) {
            typeName = t.simpleString();
            Node el = null;
            String[] ns = null;
            Node[] fs = null;
            Map<String, Integer> ix = null;
            Map<String, Integer> fo = null;
            int p = 0;
            int s = 0;
            if (t instanceof StringType) {
                type = T_STRING;
            } else if (t instanceof BooleanType) {
                type = T_BOOLEAN;
            } else if (t instanceof ByteType) {
                type = T_BYTE;
            } else if (t instanceof ShortType) {
                type = T_SHORT;
            } else if (t instanceof IntegerType) {
                type = T_INT;
            } else if (t instanceof LongType) {
                type = T_LONG;
            } else if (t instanceof FloatType) {
                type = T_FLOAT;
            } else if (t instanceof DoubleType) {
                type = T_DOUBLE;
            } else if (t instanceof DecimalType) {
                type = T_DECIMAL;
                p = ((DecimalType) t).precision();
                s = ((DecimalType) t).scale();
            } else if (t instanceof ArrayType) {
                type = T_ARRAY;
                el = new Node(((ArrayType) t).elementType());
            } else if (t instanceof MapType) {
                type = T_MAP;
                el = new Node(((MapType) t).valueType());
            } else if (t instanceof StructType) {
                type = T_STRUCT;
                StructField[] sf = ((StructType) t).fields();
                ns = new String[sf.length];
                fs = new Node[sf.length];
                ix = new HashMap<String, Integer>();
                fo = new HashMap<String, Integer>();
                for (int i = 0; i < sf.length; i++) {
                    ns[i] = sf[i].name().intern();  // Jackson interns field names: == finds most
                    fs[i] = new Node(sf[i].dataType());
                    ix.put(ns[i], i);
                    fo.put(fold(ns[i]), i);
                }
            } else {
                throw new IllegalArgumentException("unsupported type " + typeName);
            }
            this.precision = p;
            this.scale = s;
            this.element = el;
            this.names = ns;
            this.fields = fs;
            this.index = ix;
            this.folded = fo;
        }

        int find(String name) {
            String[] ns = names;
            for (int i = 0; i < ns.length; i++) {
                if (ns[i] == name) {
                    return i;
                }
            }
            Integer i = index.get(name);
            return i == null ? -1 : i;
        }
    }

    static String fold(String name) {
        return name.toLowerCase(Locale.ROOT);
    }

    // ------------------------------------------------------------------------------------------
    // One line

    /** Unwinds the parse once the line's verdict is a value problem; the rest is only checked for syntax. */
    private static final class Stop extends RuntimeException {
        private static final long serialVersionUID = 1L;

        Stop() {
            super(null, null, false, false);
        }
    }

    private static final Stop STOP = new Stop();

    private final Spec spec;
    private final Node root;
    private final int[] required;
    private byte[] buf;
    private int base;          // where the JSON text starts in buf (after a byte-order mark)
    private int end;
    private int lineOff;
    private int problem;       // the first value problem, or -1
    private String problemDetail;
    private int syntax;        // too_deep found, or -1
    private String syntaxDetail;
    private String[] path = new String[16];
    private int pathLen;
    private String[] unknown = new String[4];
    private int unknownLen;
    private final boolean[] rootAbsent;

    JsonLineParser(Spec spec) {
        this.spec = spec;
        this.root = new Node(spec.schema);
        this.required = new int[spec.required.length];
        this.rootAbsent = new boolean[root.names.length];
        for (int i = 0; i < required.length; i++) {
            Integer ix = root.index.get(spec.required[i]);
            required[i] = ix == null ? -1 : ix;
        }
    }

    /** The reasons, for the driver to compare with its own list. */
    public static String reasons() {
        return String.join(",", REASONS);
    }

    /**
     * The row of one line: {@code bytes[off, off + len)} of {@code file}. A failure of the parser
     * itself (never of the line: every line gets a row) is an {@code AssertionError}, so that the
     * reader cannot take it for a file it failed to read.
     */
    public InternalRow parse(byte[] bytes, int off, int len, UTF8String file) {
        try {
            return parseLine(bytes, off, len, file);
        } catch (RuntimeException e) {
            throw new AssertionError("the JSONL parser failed on a line of " + file + ": " + e, e);
        }
    }

    private InternalRow parseLine(byte[] bytes, int off, int len, UTF8String file) {
        if (len > spec.maxLineBytes) {
            return reject(file, LINE_TOO_LONG, len + " bytes, over the limit of " + spec.maxLineBytes, bytes, off, len);
        }
        int bad = invalidUtf8(bytes, off, off + len);
        if (bad >= 0) {
            return reject(file, INVALID_UTF8, "byte " + (bad - off) + " is not UTF-8", bytes, off, len);
        }
        int start = off;
        if (len >= 3 && bytes[off] == (byte) 0xEF && bytes[off + 1] == (byte) 0xBB && bytes[off + 2] == (byte) 0xBF) {
            start += 3;
        }
        int e = off + len;
        if (blank(bytes, start, e)) {
            return row(file, BLANK, null, null, NO_NAMES, null, null);
        }
        buf = bytes;
        base = start;
        end = e;
        lineOff = off;
        problem = -1;
        problemDetail = null;
        syntax = -1;
        syntaxDetail = null;
        pathLen = 0;
        unknownLen = 0;
        InternalRow record = null;
        JsonParser p = null;
        try {
            p = FACTORY.createParser(bytes, start, e - start);
            JsonToken t = p.nextToken();
            if (t != JsonToken.START_OBJECT) {
                return reject(file, NOT_JSON, "the line is " + describe(t) + ", not a JSON object", bytes, off, len);
            }
            try {
                record = readStruct(p, root, 1);
            } catch (Stop stop) {
                drain(p);
            }
            int after = base + (int) p.currentLocation().getByteOffset();
            for (int i = after; i < end; i++) {
                byte c = bytes[i];
                if (c != ' ' && c != '\t' && c != '\r' && c != '\n') {
                    return reject(file, TRAILING, "more after the object, at byte " + (i - off), bytes, off, len);
                }
            }
        } catch (StreamConstraintsException ex) {
            return reject(file, TOO_DEEP, "nested deeper than " + HARD_DEPTH + " levels", bytes, off, len);
        } catch (JsonProcessingException ex) {
            return reject(file, NOT_JSON, jacksonMessage(ex), bytes, off, len);
        } catch (IOException ex) {
            return reject(file, NOT_JSON, String.valueOf(ex.getMessage()), bytes, off, len);
        } finally {
            if (p != null) {
                try {
                    p.close();
                } catch (IOException ignored) {
                    // an in-memory parser: nothing to release but its buffers
                }
            }
            buf = null;
        }
        if (syntax >= 0) {
            return reject(file, syntax, syntaxDetail, bytes, off, len);
        }
        if (problem >= 0) {
            return reject(file, problem, problemDetail, bytes, off, len);
        }
        String missing = null;
        for (int i = 0; i < required.length; i++) {
            int ix = required[i];
            if (ix < 0 || record.isNullAt(ix)) {
                String what = spec.required[i] + (ix >= 0 && !rootAbsent[ix] ? " is null" : " is absent");
                missing = missing == null ? what : missing + ", " + what;
            }
        }
        if (missing != null) {
            return reject(file, MISSING, missing, bytes, off, len);
        }
        ArrayData names = NO_NAMES;
        if (unknownLen > 0) {
            if (spec.strict) {
                return reject(file, UNKNOWN, String.join(", ", Arrays.copyOf(unknown, unknownLen)), bytes, off, len);
            }
            Object[] u = new Object[unknownLen];
            for (int i = 0; i < unknownLen; i++) {
                u[i] = UTF8String.fromString(unknown[i]);
            }
            names = new GenericArrayData(u);
        }
        return row(file, OK, null, null, names, null, record);
    }

    private static InternalRow row(UTF8String file, UTF8String kind, UTF8String reason, UTF8String detail,
                                   ArrayData unknown, UTF8String value, InternalRow parsed) {
        return new GenericInternalRow(new Object[] {file, kind, reason, detail, unknown, value, parsed});
    }

    private static InternalRow reject(UTF8String file, int reason, String detail, byte[] b, int off, int len) {
        return row(file, REJECT, REASON_UTF8[reason], UTF8String.fromString(detail), NO_NAMES,
                   UTF8String.fromBytes(Arrays.copyOfRange(b, off, off + len)), null);
    }

    private static boolean blank(byte[] b, int from, int to) {
        for (int i = from; i < to; i++) {
            byte c = b[i];
            if (c != ' ' && c != '\t' && c != '\r' && c != '\n') {
                return false;
            }
        }
        return true;
    }

    private static final long HIGH_BITS = 0x8080808080808080L;
    private static final long LOW_BITS = 0x0101010101010101L;
    private static final long QUOTES = LOW_BITS * '"';
    private static final long BACKSLASHES = LOW_BITS * '\\';

    /** The index of the first {@code "} or backslash in {@code b[from, to)}, or {@code to}. */
    static int quoteOrEscape(byte[] b, int from, int to) {
        int i = from;
        while (i + 8 <= to) {
            long w = Platform.getLong(b, Platform.BYTE_ARRAY_OFFSET + i);
            long q = w ^ QUOTES;
            long e = w ^ BACKSLASHES;
            if (((((q - LOW_BITS) & ~q) | ((e - LOW_BITS) & ~e)) & HIGH_BITS) != 0) {
                break;  // a byte of the eight is one of them
            }
            i += 8;
        }
        while (i < to && b[i] != '"' && b[i] != '\\') {
            i++;
        }
        return i;
    }

    /** The index of the first byte that is not part of well-formed UTF-8, or -1. */
    static int invalidUtf8(byte[] b, int from, int to) {
        int i = from;
        while (i < to) {
            if (i + 8 <= to && (Platform.getLong(b, Platform.BYTE_ARRAY_OFFSET + i) & HIGH_BITS) == 0) {
                i += 8;  // eight ASCII bytes
                continue;
            }
            int c = b[i];
            if (c >= 0) {
                i++;
                continue;
            }
            c &= 0xFF;
            if (c >= 0xE1 && c != 0xED && c <= 0xEF && i + 2 < to) {
                // the common three-byte form (CJK): no overlong or surrogate forms start with these
                if ((b[i + 1] & 0xC0) != 0x80 || (b[i + 2] & 0xC0) != 0x80) {
                    return i;
                }
                i += 3;
                continue;
            }
            int need;
            int lo = 0x80;
            int hi = 0xBF;
            if (c >= 0xC2 && c <= 0xDF) {
                need = 1;
            } else if (c >= 0xE0 && c <= 0xEF) {
                need = 2;
                if (c == 0xE0) {
                    lo = 0xA0;          // no overlong forms
                } else if (c == 0xED) {
                    hi = 0x9F;          // no encoded surrogates
                }
            } else if (c >= 0xF0 && c <= 0xF4) {
                need = 3;
                if (c == 0xF0) {
                    lo = 0x90;
                } else if (c == 0xF4) {
                    hi = 0x8F;          // nothing above U+10FFFF
                }
            } else {
                return i;
            }
            if (i + need >= to) {
                return i;  // cut short
            }
            int c1 = b[i + 1] & 0xFF;
            if (c1 < lo || c1 > hi) {
                return i;
            }
            for (int k = 2; k <= need; k++) {
                int ck = b[i + k] & 0xFF;
                if (ck < 0x80 || ck > 0xBF) {
                    return i;
                }
            }
            i += need + 1;
        }
        return -1;
    }

    private String jacksonMessage(JsonProcessingException ex) {
        String m = ex.getOriginalMessage();
        if (m == null) {
            m = ex.getClass().getSimpleName();
        }
        int nl = m.indexOf('\n');
        if (nl >= 0) {
            m = m.substring(0, nl);
        }
        int hint = m.indexOf(": enable `");  // Jackson's advice on its own settings, not the user's
        if (hint >= 0) {
            m = m.substring(0, hint);
        }
        if (m.length() > 200) {
            m = m.substring(0, 200) + "...";
        }
        JsonLocation loc = ex.getLocation();
        if (loc != null && loc.getByteOffset() >= 0) {
            m += " (at byte " + (loc.getByteOffset() + base - lineOff) + ")";
        }
        return m;
    }

    private static String describe(JsonToken t) {
        if (t == null) {
            return "empty";
        }
        switch (t) {
            case START_ARRAY:
                return "a JSON array";
            case VALUE_STRING:
                return "a JSON string";
            case VALUE_NUMBER_INT:
            case VALUE_NUMBER_FLOAT:
                return "a JSON number";
            case VALUE_TRUE:
            case VALUE_FALSE:
                return "a JSON boolean";
            case VALUE_NULL:
                return "JSON null";
            default:
                return String.valueOf(t);
        }
    }

    private static String found(JsonToken t) {
        switch (t) {
            case START_OBJECT:
                return "an object";
            case START_ARRAY:
                return "an array";
            case VALUE_STRING:
                return "a string";
            case VALUE_NUMBER_INT:
                return "an integer";
            case VALUE_NUMBER_FLOAT:
                return "a number with a fraction or exponent";
            case VALUE_TRUE:
            case VALUE_FALSE:
                return "a boolean";
            default:
                return String.valueOf(t);
        }
    }

    // ------------------------------------------------------------------------------------------
    // Paths and problems

    private void push(String step) {
        if (pathLen == path.length) {
            path = Arrays.copyOf(path, pathLen * 2);
        }
        path[pathLen++] = step;
    }

    private String pathString(String last) {
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < pathLen; i++) {
            append(sb, path[i]);
        }
        if (last != null) {
            append(sb, last);
        }
        return sb.toString();
    }

    private static void append(StringBuilder sb, String step) {
        if (step == ARRAY_STEP || step == MAP_STEP) {
            sb.append(step);
        } else {
            if (sb.length() > 0) {
                sb.append('.');
            }
            sb.append(step);
        }
    }

    private String where() {
        return pathLen == 0 ? "(the line)" : pathString(null);
    }

    private Stop fail(int reason, String detail) {
        problem = reason;
        problemDetail = detail;
        return STOP;
    }

    private Stop mismatch(Node n, JsonToken t) {
        return fail(MISMATCH, where() + ": expected " + n.typeName + ", found " + found(t));
    }

    private Stop outOfRange(Node n, JsonParser p) throws IOException {
        String text = p.getText();
        if (text.length() > 40) {
            text = text.substring(0, 40) + "...";
        }
        return fail(OUT_OF_RANGE, where() + ": " + text + " does not fit " + n.typeName);
    }

    private void tooDeep(JsonParser p) {
        if (syntax < 0) {
            syntax = TOO_DEEP;
            syntaxDetail = "nested deeper than " + MAX_DEPTH + " levels, at byte "
                + (p.currentTokenLocation().getByteOffset() + base - lineOff);
        }
    }

    private void addUnknown(String name) {
        String full = pathString(name);
        for (int i = 0; i < unknownLen; i++) {
            if (unknown[i].equals(full)) {
                return;
            }
        }
        if (unknownLen == unknown.length) {
            unknown = Arrays.copyOf(unknown, unknownLen * 2);
        }
        unknown[unknownLen++] = full;
    }

    /** After a value problem: read on to the end of the object, for syntax only. */
    private void drain(JsonParser p) throws IOException {
        int depth = 0;
        for (JsonStreamContext c = p.getParsingContext(); c != null && !c.inRoot(); c = c.getParent()) {
            depth++;
        }
        while (depth > 0) {
            JsonToken t = p.nextToken();
            if (t == null) {
                return;
            }
            if (t == JsonToken.START_OBJECT || t == JsonToken.START_ARRAY) {
                if (++depth > MAX_DEPTH) {
                    tooDeep(p);
                }
            } else if (t == JsonToken.END_OBJECT || t == JsonToken.END_ARRAY) {
                depth--;
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // Values

    private InternalRow readStruct(JsonParser p, Node n, int depth) throws IOException {
        if (depth > MAX_DEPTH) {
            tooDeep(p);
            throw STOP;
        }
        int size = n.names.length;
        Object[] values = new Object[size];
        long set = 0L;
        long[] setMore = size > 64 ? new long[(size + 63) >>> 6] : null;
        HashSet<String> others = null;
        String[] variantNames = null;  // per field: another spelling of its name met in this object
        JsonToken t;
        while ((t = p.nextToken()) == JsonToken.FIELD_NAME) {
            String name = p.currentName();
            int i = n.find(name);
            JsonToken vt = p.nextToken();
            if (i >= 0) {
                boolean seen = setMore == null ? (set & (1L << i)) != 0 : (setMore[i >>> 6] & (1L << i)) != 0;
                if (seen) {
                    throw fail(DUPLICATE, pathString(name));
                }
                if (setMore == null) {
                    set |= 1L << i;
                } else {
                    setMore[i >>> 6] |= 1L << i;
                }
                if (vt == JsonToken.VALUE_NULL) {
                    continue;
                }
                push(name);
                values[i] = readValue(p, vt, n.fields[i], depth);
                pathLen--;
            } else {
                checkName(p, name);
                if (others == null) {
                    others = new HashSet<String>();
                }
                if (!others.add(name)) {
                    throw fail(DUPLICATE, pathString(name));
                }
                Integer ci = n.folded.get(fold(name));
                if (ci != null) {
                    if (variantNames == null) {
                        variantNames = new String[size];
                    }
                    variantNames[ci] = name;
                }
                if (spec.checkFields) {
                    addUnknown(name);
                }
                push(name);
                walk(p, vt, depth);
                pathLen--;
            }
        }
        if (variantNames != null) {
            for (int i = 0; i < size; i++) {
                boolean isSet = setMore == null ? (set & (1L << i)) != 0 : (setMore[i >>> 6] & (1L << i)) != 0;
                if (variantNames[i] != null && isSet) {
                    throw fail(DUPLICATE, pathString(n.names[i]) + " and " + variantNames[i] + " differ only in case");
                }
            }
        }
        if (depth == 1) {
            // the record does not tell an absent required field from a null one; the detail does
            for (int r : required) {
                if (r >= 0) {
                    rootAbsent[r] = setMore == null ? (set & (1L << r)) == 0 : (setMore[r >>> 6] & (1L << r)) == 0;
                }
            }
        }
        return new GenericInternalRow(values);
    }

    private Object readValue(JsonParser p, JsonToken t, Node n, int depth) throws IOException {
        if (t == JsonToken.VALUE_NULL) {
            return null;
        }
        switch (n.type) {
            case T_STRING:
                return readString(p, t, depth);
            case T_BOOLEAN:
                if (t == JsonToken.VALUE_TRUE) {
                    return Boolean.TRUE;
                }
                if (t == JsonToken.VALUE_FALSE) {
                    return Boolean.FALSE;
                }
                throw mismatch(n, t);
            case T_BYTE:
            case T_SHORT:
            case T_INT:
            case T_LONG:
                if (t != JsonToken.VALUE_NUMBER_INT) {
                    throw mismatch(n, t);
                }
                return readIntegral(p, n);
            case T_FLOAT:
            case T_DOUBLE:
                if (t != JsonToken.VALUE_NUMBER_INT && t != JsonToken.VALUE_NUMBER_FLOAT) {
                    throw mismatch(n, t);
                }
                return readFloating(p, n);
            case T_DECIMAL:
                if (t != JsonToken.VALUE_NUMBER_INT && t != JsonToken.VALUE_NUMBER_FLOAT) {
                    throw mismatch(n, t);
                }
                return readDecimal(p, n);
            case T_STRUCT:
                if (t != JsonToken.START_OBJECT) {
                    throw mismatch(n, t);
                }
                return readStruct(p, n, depth + 1);
            case T_ARRAY:
                if (t != JsonToken.START_ARRAY) {
                    throw mismatch(n, t);
                }
                return readArray(p, n, depth + 1);
            case T_MAP:
                if (t != JsonToken.START_OBJECT) {
                    throw mismatch(n, t);
                }
                return readMap(p, n, depth + 1);
            default:
                throw mismatch(n, t);
        }
    }

    private ArrayData readArray(JsonParser p, Node n, int depth) throws IOException {
        if (depth > MAX_DEPTH) {
            tooDeep(p);
            throw STOP;
        }
        Object[] items = new Object[8];
        int count = 0;
        push(ARRAY_STEP);
        JsonToken t;
        while ((t = p.nextToken()) != JsonToken.END_ARRAY) {
            if (count == items.length) {
                items = Arrays.copyOf(items, count * 2);
            }
            items[count++] = readValue(p, t, n.element, depth);
        }
        pathLen--;
        return new GenericArrayData(count == items.length ? items : Arrays.copyOf(items, count));
    }

    private Object readMap(JsonParser p, Node n, int depth) throws IOException {
        if (depth > MAX_DEPTH) {
            tooDeep(p);
            throw STOP;
        }
        Object[] keys = new Object[8];
        Object[] values = new Object[8];
        int count = 0;
        HashSet<String> seen = new HashSet<String>();
        JsonToken t;
        while ((t = p.nextToken()) == JsonToken.FIELD_NAME) {
            String name = p.currentName();
            checkName(p, name);
            if (!seen.add(name)) {
                throw fail(DUPLICATE, pathString(name));
            }
            JsonToken vt = p.nextToken();
            if (count == keys.length) {
                keys = Arrays.copyOf(keys, count * 2);
                values = Arrays.copyOf(values, count * 2);
            }
            keys[count] = UTF8String.fromString(name);
            push(MAP_STEP);
            values[count] = readValue(p, vt, n.element, depth);
            pathLen--;
            count++;
        }
        return new ArrayBasedMapData(new GenericArrayData(Arrays.copyOf(keys, count)),
                                     new GenericArrayData(Arrays.copyOf(values, count)));
    }

    /** A string column's value: a JSON string's text, or any other value's JSON text as written. */
    private UTF8String readString(JsonParser p, JsonToken t, int depth) throws IOException {
        switch (t) {
            case VALUE_STRING:
                return stringValue(p);
            case VALUE_TRUE:
                return TRUE;
            case VALUE_FALSE:
                return FALSE;
            case VALUE_NUMBER_INT:
            case VALUE_NUMBER_FLOAT: {
                int from = base + (int) p.currentTokenLocation().getByteOffset();
                int to = base + (int) p.currentLocation().getByteOffset();
                return UTF8String.fromBytes(Arrays.copyOfRange(buf, from, to));
            }
            case START_OBJECT:
            case START_ARRAY: {
                int from = base + (int) p.currentTokenLocation().getByteOffset();
                walk(p, t, depth);
                int to = base + (int) p.currentLocation().getByteOffset();
                return UTF8String.fromBytes(Arrays.copyOfRange(buf, from, to));
            }
            default:
                throw fail(MISMATCH, where() + ": unexpected " + t);
        }
    }

    /**
     * A JSON string's value as UTF-8. Without escapes its bytes are the line's own (already
     * checked UTF-8); with escapes, Jackson's decoded text, which must not hold a lone surrogate.
     */
    private UTF8String stringValue(JsonParser p) throws IOException {
        int q = base + (int) p.currentTokenLocation().getByteOffset();
        if (q < end && buf[q] == '"') {
            int i = quoteOrEscape(buf, q + 1, end);
            if (i < end && buf[i] == '"') {
                return UTF8String.fromBytes(Arrays.copyOfRange(buf, q + 1, i));
            }
        }
        char[] cs = p.getTextCharacters();
        int off = p.getTextOffset();
        int len = p.getTextLength();
        return UTF8String.fromBytes(encode(cs, off, len));
    }

    /** UTF-8 of decoded text; a lone surrogate is a reject. */
    private byte[] encode(char[] cs, int off, int len) {
        byte[] out = new byte[len * 3];
        int o = 0;
        int e = off + len;
        for (int i = off; i < e; i++) {
            char c = cs[i];
            if (c < 0x80) {
                out[o++] = (byte) c;
            } else if (c < 0x800) {
                out[o++] = (byte) (0xC0 | (c >> 6));
                out[o++] = (byte) (0x80 | (c & 0x3F));
            } else if (Character.isHighSurrogate(c)) {
                if (i + 1 < e && Character.isLowSurrogate(cs[i + 1])) {
                    int cp = Character.toCodePoint(c, cs[++i]);
                    out[o++] = (byte) (0xF0 | (cp >> 18));
                    out[o++] = (byte) (0x80 | ((cp >> 12) & 0x3F));
                    out[o++] = (byte) (0x80 | ((cp >> 6) & 0x3F));
                    out[o++] = (byte) (0x80 | (cp & 0x3F));
                } else {
                    throw loneSurrogate(c);
                }
            } else if (Character.isLowSurrogate(c)) {
                throw loneSurrogate(c);
            } else {
                out[o++] = (byte) (0xE0 | (c >> 12));
                out[o++] = (byte) (0x80 | ((c >> 6) & 0x3F));
                out[o++] = (byte) (0x80 | (c & 0x3F));
            }
        }
        return o == out.length ? out : Arrays.copyOf(out, o);
    }

    private Stop loneSurrogate(char c) {
        return fail(INVALID_UNICODE, where() + ": a lone surrogate \\u" + String.format("%04x", (int) c));
    }

    /** A key the schema does not name: it must still be valid Unicode. */
    private void checkName(JsonParser p, String name) {
        for (int i = 0; i < name.length(); i++) {
            char c = name.charAt(i);
            if (Character.isSurrogate(c)) {
                if (Character.isHighSurrogate(c) && i + 1 < name.length() && Character.isLowSurrogate(name.charAt(i + 1))) {
                    i++;
                    continue;
                }
                throw fail(INVALID_UNICODE, where() + ": a key holds a lone surrogate \\u"
                    + String.format("%04x", (int) c));
            }
        }
    }

    /** A value the schema does not type (an unknown field's, or one kept as text): checked, not kept. */
    private void walk(JsonParser p, JsonToken t, int depth) throws IOException {
        if (t == JsonToken.START_OBJECT) {
            if (depth + 1 > MAX_DEPTH) {
                tooDeep(p);
                throw STOP;
            }
            String first = null;
            HashSet<String> seen = null;
            JsonToken k;
            while ((k = p.nextToken()) == JsonToken.FIELD_NAME) {
                String name = p.currentName();
                checkName(p, name);
                if (first == null) {
                    first = name;
                } else {
                    if (seen == null) {
                        seen = new HashSet<String>();
                        seen.add(first);
                    }
                    if (!seen.add(name)) {
                        throw fail(DUPLICATE, pathString(name));
                    }
                }
                push(name);
                walk(p, p.nextToken(), depth + 1);
                pathLen--;
            }
        } else if (t == JsonToken.START_ARRAY) {
            if (depth + 1 > MAX_DEPTH) {
                tooDeep(p);
                throw STOP;
            }
            push(ARRAY_STEP);
            JsonToken v;
            while ((v = p.nextToken()) != JsonToken.END_ARRAY) {
                walk(p, v, depth + 1);
            }
            pathLen--;
        } else if (t == JsonToken.VALUE_STRING) {
            checkString(p);
        }
    }

    /** A string that is not kept: only whether it holds a lone surrogate (only escapes can). */
    private void checkString(JsonParser p) throws IOException {
        int q = base + (int) p.currentTokenLocation().getByteOffset();
        if (q < end && buf[q] == '"') {
            int i = quoteOrEscape(buf, q + 1, end);
            if (i < end && buf[i] == '"') {
                return;
            }
        }
        char[] cs = p.getTextCharacters();
        int off = p.getTextOffset();
        int e = off + p.getTextLength();
        for (int i = off; i < e; i++) {
            char c = cs[i];
            if (Character.isHighSurrogate(c) && i + 1 < e && Character.isLowSurrogate(cs[i + 1])) {
                i++;
            } else if (Character.isSurrogate(c)) {
                throw loneSurrogate(c);
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // Numbers: exact, or a reject

    private Object readIntegral(JsonParser p, Node n) throws IOException {
        int len = p.getTextLength();
        if (len > 20) {
            throw outOfRange(n, p);
        }
        JsonParser.NumberType nt = p.getNumberType();
        if (nt == JsonParser.NumberType.BIG_INTEGER) {
            throw outOfRange(n, p);
        }
        long v = p.getLongValue();
        switch (n.type) {
            case T_LONG:
                return v;
            case T_INT:
                if (v < Integer.MIN_VALUE || v > Integer.MAX_VALUE) {
                    throw outOfRange(n, p);
                }
                return (int) v;
            case T_SHORT:
                if (v < Short.MIN_VALUE || v > Short.MAX_VALUE) {
                    throw outOfRange(n, p);
                }
                return (short) v;
            default:
                if (v < Byte.MIN_VALUE || v > Byte.MAX_VALUE) {
                    throw outOfRange(n, p);
                }
                return (byte) v;
        }
    }

    private Object readFloating(JsonParser p, Node n) throws IOException {
        if (n.type == T_FLOAT) {
            float f = Float.parseFloat(p.getText());
            if (Float.isInfinite(f) || f == 0.0f && nonZero(p)) {
                throw outOfRange(n, p);
            }
            return f;
        }
        double d = p.getDoubleValue();
        if (Double.isInfinite(d) || d == 0.0 && nonZero(p)) {
            throw outOfRange(n, p);
        }
        return d;
    }

    /** Whether a number's digits (before any exponent) hold anything but zeros. */
    private static boolean nonZero(JsonParser p) throws IOException {
        char[] cs = p.getTextCharacters();
        int off = p.getTextOffset();
        int e = off + p.getTextLength();
        for (int i = off; i < e; i++) {
            char c = cs[i];
            if (c == 'e' || c == 'E') {
                return false;
            }
            if (c >= '1' && c <= '9') {
                return true;
            }
        }
        return false;
    }

    private Object readDecimal(JsonParser p, Node n) throws IOException {
        BigDecimal v = p.getDecimalValue().stripTrailingZeros();
        if (v.signum() != 0 && (v.scale() > n.scale || v.precision() - v.scale() > n.precision - n.scale)) {
            throw outOfRange(n, p);
        }
        return Decimal.apply(v.setScale(n.scale), n.precision, n.scale);
    }
}
