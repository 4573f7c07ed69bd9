package promptscore.readahead;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.EOFException;
import java.io.FileNotFoundException;
import java.io.IOException;
import java.io.InputStream;
import java.io.InterruptedIOException;
import java.io.Serializable;
import java.io.UncheckedIOException;
import java.lang.reflect.Method;
import java.net.SocketException;
import java.net.SocketTimeoutException;
import java.net.URI;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Iterator;
import java.util.LinkedList;
import java.util.List;
import java.util.NoSuchElementException;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.ThreadFactory;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.regex.Pattern;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataInputStream;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.io.Text;
import org.apache.hadoop.io.compress.CodecPool;
import org.apache.hadoop.io.compress.CompressionCodec;
import org.apache.hadoop.io.compress.CompressionCodecFactory;
import org.apache.hadoop.io.compress.Decompressor;
import org.apache.hadoop.mapreduce.TaskAttemptID;
import org.apache.hadoop.mapreduce.lib.input.FileSplit;
import org.apache.hadoop.mapreduce.lib.input.LineRecordReader;
import org.apache.hadoop.mapreduce.task.TaskAttemptContextImpl;
import org.apache.hadoop.util.LineReader;
import org.apache.spark.Partition;
import org.apache.spark.TaskContext;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.api.java.function.FlatMapFunction;
import org.apache.spark.broadcast.Broadcast;
import org.apache.spark.rdd.RDD;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.expressions.GenericInternalRow;
import org.apache.spark.unsafe.Platform;
import org.apache.spark.unsafe.types.UTF8String;
import org.apache.spark.util.LongAccumulator;
import org.apache.spark.util.SerializableConfiguration;

/**
 * The lines of a Spark text scan's files, read with the next files' requests already in flight.
 *
 * <p>Spark's file source opens a task's files one after another, so on an object store a task
 * waits one request's latency per file. This reader takes the partitions Spark planned for the
 * scan (the same files, in the same tasks) and, in each task, fetches up to {@code inFlight}
 * whole files ahead on a small thread pool while the task parses the current one. The lines are
 * split exactly as Spark's text source splits them, by the rules of Hadoop's {@code LineReader}
 * (LF, CR or CRLF; a UTF-8 byte-order mark at the start of a file dropped, as
 * {@code LineRecordReader} does): an uncompressed file fetched whole is split in place
 * ({@link InMemory}), a compressed one through {@code LineReader} itself. A file that is split
 * over tasks, or larger than {@code wholeFileLimit}, is read by Hadoop's {@code LineRecordReader}
 * itself, with nothing ahead.
 *
 * <p>Each row is {@code value} (the line's bytes, unchanged) and {@code _metadata}:
 * {@code file_path} (the percent-encoded URI, as Spark's {@code _metadata.file_path}),
 * {@code file_name}, {@code file_size} and {@code file_modification_time}. A file that cannot be
 * read fails the task with Spark's wording, "Encountered error while reading file URI", when the
 * task reaches it.
 *
 * <p>A whole-file read that fails with a transient error (a 5xx answer, a connection reset or
 * timeout, a response cut short) is read again from its start, up to {@code FETCH_ATTEMPTS} times
 * with growing pauses; each retry is counted in the {@code retries} accumulator. A missing file,
 * a refused access or any other error fails at once. A file's bytes count in the task's input
 * metrics once all its lines have been handed on.
 */
public final class ReadAheadLines {
    private ReadAheadLines() {
    }

    /** One file (or a split of one) as Spark planned it. */
    static final class Piece implements Serializable {
        private static final long serialVersionUID = 1L;
        final String uri;
        final long start;
        final long length;
        final long size;
        final long mtimeMs;

        Piece(String uri, long start, long length, long size, long mtimeMs) {
            this.uri = uri;
            this.start = start;
            this.length = length;
            this.size = size;
            this.mtimeMs = mtimeMs;
        }
    }

    /** The rows of the files of {@code scan}, a file scan's RDD (FileScanRDD): one task per partition. */
    public static JavaRDD<InternalRow> lines(JavaSparkContext jsc, RDD<?> scan, Configuration conf, int inFlight,
                                             long maxBufferedBytes, long wholeFileLimit) throws Exception {
        return lines(jsc, scan, conf, inFlight, maxBufferedBytes, wholeFileLimit, null, null);
    }

    /**
     * As above, counting the retried reads of whole files in {@code retries} (may be null); with a
     * {@code parser} spec each line is parsed as it is read, without a copy, and the rows are
     * {@link JsonLineParser}'s (with {@code source_file} the line's file_path).
     */
    public static JavaRDD<InternalRow> lines(JavaSparkContext jsc, RDD<?> scan, Configuration conf, int inFlight,
                                             long maxBufferedBytes, long wholeFileLimit, LongAccumulator retries,
                                             JsonLineParser.Spec parser) throws Exception {
        List<Piece[]> bins = new ArrayList<Piece[]>();
        Method[] get = null;
        for (Partition p : scan.partitions()) {
            Object[] files = (Object[]) p.getClass().getMethod("files").invoke(p);
            Piece[] bin = new Piece[files.length];
            for (int i = 0; i < files.length; i++) {
                Object f = files[i];
                if (get == null) {
                    Class<?> c = f.getClass();
                    get = new Method[] {c.getMethod("filePath"), c.getMethod("start"), c.getMethod("length"),
                        c.getMethod("fileSize"), c.getMethod("modificationTime")};
                }
                bin[i] = new Piece(get[0].invoke(f).toString(), (Long) get[1].invoke(f), (Long) get[2].invoke(f),
                                   (Long) get[3].invoke(f), (Long) get[4].invoke(f));
            }
            bins.add(bin);
        }
        // A cluster's mapred-site.xml may cap line length, and LineRecordReader then skips longer
        // lines with only a log line: here every line reaches the job, which rejects it, counted.
        Configuration own = new Configuration(conf);
        own.setInt(LineRecordReader.MAX_LINE_LENGTH, Integer.MAX_VALUE);
        Broadcast<SerializableConfiguration> shared = jsc.broadcast(new SerializableConfiguration(own));
        return jsc.parallelize(bins, Math.max(1, bins.size()))
                  .mapPartitions(new Reader(shared, Math.max(1, inFlight), maxBufferedBytes, wholeFileLimit,
                                            retries, parser), false);
    }


    static final class Reader implements FlatMapFunction<Iterator<Piece[]>, InternalRow> {
        private static final long serialVersionUID = 1L;
        private final Broadcast<SerializableConfiguration> conf;
        private final int inFlight;
        private final long maxBufferedBytes;
        private final long wholeFileLimit;
        private final LongAccumulator retries;
        private final JsonLineParser.Spec parser;

        Reader(Broadcast<SerializableConfiguration> conf, int inFlight, long maxBufferedBytes, long wholeFileLimit,
               LongAccumulator retries, JsonLineParser.Spec parser) {
            this.conf = conf;
            this.inFlight = inFlight;
            this.maxBufferedBytes = maxBufferedBytes;
            this.wholeFileLimit = wholeFileLimit;
            this.retries = retries;
            this.parser = parser;
        }

        @Override
        public Iterator<InternalRow> call(Iterator<Piece[]> bins) {
            List<Piece> pieces = new ArrayList<Piece>();
            while (bins.hasNext()) {
                pieces.addAll(Arrays.asList(bins.next()));
            }
            final TaskLines lines = new TaskLines(conf.value().value(), pieces, inFlight, maxBufferedBytes,
                                                  wholeFileLimit, retries);
            lines.parser = parser == null ? null : parser.newParser();
            TaskContext ctx = TaskContext.get();
            if (ctx != null) {
                ctx.addTaskCompletionListener(new org.apache.spark.util.TaskCompletionListener() {
                    @Override
                    public void onTaskCompletion(TaskContext context) {
                        lines.close();
                    }
                });
            }
            return lines;
        }
    }

    /** The lines of one task's files, in order, with the next files fetched ahead. */
    static final class TaskLines implements Iterator<InternalRow> {
        private final Configuration conf;
        private final List<Piece> pieces;
        private final int inFlight;
        private final long maxBufferedBytes;
        private final long wholeFileLimit;
        private final LongAccumulator retries;
        private final ExecutorService pool;
        private final LinkedList<Future<byte[]>> ahead = new LinkedList<Future<byte[]>>();  // null: streamed
        private final CompressionCodecFactory codecs;
        private final TaskContext ctx = TaskContext.get();
        private int submitted;   // pieces handed to the pool (or marked to be streamed)
        private int opened;      // pieces the task has started to emit
        private long buffered;   // bytes of whole files fetched ahead and not yet opened
        private Lines current;
        private InternalRow nextRow;
        JsonLineParser parser;  // null: rows of the lines themselves

        TaskLines(Configuration conf, List<Piece> pieces, int inFlight, long maxBufferedBytes, long wholeFileLimit,
                  LongAccumulator retries) {
            this.conf = conf;
            this.pieces = pieces;
            this.inFlight = inFlight;
            this.maxBufferedBytes = maxBufferedBytes;
            this.wholeFileLimit = wholeFileLimit;
            this.retries = retries;
            this.codecs = new CompressionCodecFactory(conf);
            final AtomicInteger n = new AtomicInteger();
            this.pool = Executors.newFixedThreadPool(inFlight, new ThreadFactory() {
                @Override
                public Thread newThread(Runnable r) {
                    Thread t = new Thread(r, "promptscore-read-ahead-" + n.incrementAndGet());
                    t.setDaemon(true);
                    return t;
                }
            });
        }

        private boolean whole(Piece p) {
            return p.start == 0 && p.length >= p.size && p.size <= wholeFileLimit;
        }

        private void fill() {
            while (submitted < pieces.size() && submitted - opened < inFlight) {
                final Piece p = pieces.get(submitted);
                if (!whole(p)) {
                    ahead.add(null);
                } else {
                    if (buffered + p.size > maxBufferedBytes && submitted > opened) {
                        return;
                    }
                    buffered += p.size;
                    final Configuration c = conf;
                    final LongAccumulator counted = retries;
                    ahead.add(pool.submit(new Callable<byte[]>() {
                        @Override
                        public byte[] call() throws IOException {
                            return fetchWithRetries(c, p, counted);
                        }
                    }));
                }
                submitted++;
            }
        }

        @Override
        public boolean hasNext() {
            if (ctx != null) {
                ctx.killTaskIfInterrupted();  // as Spark's file scan does: a killed task stops here
            }
            if (nextRow == null) {
                nextRow = advance();
                if (nextRow != null && ctx != null) {
                    ctx.taskMetrics().inputMetrics().incRecordsRead(1);
                }
            }
            return nextRow != null;
        }

        @Override
        public InternalRow next() {
            if (!hasNext()) {
                throw new NoSuchElementException();
            }
            InternalRow row = nextRow;
            nextRow = null;
            return row;
        }

        private InternalRow advance() {
            while (true) {
                if (current != null) {
                    InternalRow row;
                    try {
                        row = current.next();
                    } catch (IOException | RuntimeException e) {
                        throw failed(current.piece, e);
                    }
                    if (row != null) {
                        return row;
                    }
                    current.close();
                    if (ctx != null) {  // counted once every line of the file has been handed on
                        ctx.taskMetrics().inputMetrics().incBytesRead(current.bytes);
                    }
                    current = null;
                }
                if (opened >= pieces.size()) {
                    close();
                    return null;
                }
                fill();
                Piece p = pieces.get(opened);
                Future<byte[]> f = ahead.poll();
                opened++;
                try {
                    if (f == null) {
                        current = Lines.streamed(conf, p);
                        current.bytes = p.length;
                    } else {
                        byte[] data = f.get();
                        buffered -= p.size;
                        current = Lines.fetched(conf, codecs, p, data);
                        current.bytes = data.length;
                    }
                } catch (ExecutionException e) {
                    throw failed(p, e.getCause());
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    throw new IllegalStateException("task interrupted while waiting for " + metadataPath(p.uri), e);
                } catch (IOException | RuntimeException e) {
                    throw failed(p, e);
                }
                current.parser = parser;
                fill();
            }
        }

        void close() {
            pool.shutdownNow();
            if (current != null) {
                current.close();
                current = null;
            }
        }

        /**
         * A read failure as Spark words it, so that the job finds the file it names. A JDK class:
         * the driver decodes a failed task's exception without this jar on its class path.
         * Errors (out of memory, linkage) are not read failures and pass unchanged.
         */
        private static RuntimeException failed(Piece p, Throwable cause) {
            if (cause instanceof Error) {
                throw (Error) cause;
            }
            IOException io = cause instanceof IOException ? (IOException) cause : new IOException(cause);
            return new UncheckedIOException(
                "Encountered error while reading file " + metadataPath(p.uri) + ". Details: " + cause, io);
        }
    }

    /** A file's URI as Spark 3.5's {@code _metadata.file_path} gives it ({@code file:/x}, not {@code file:///x}). */
    static String metadataPath(String uri) {
        return new Path(new Path(URI.create(uri)).toString()).toUri().toString();
    }

    /** Attempts of one whole-file read before its error fails the task. */
    static final int FETCH_ATTEMPTS = 5;
    /** The pause before the first retry; it doubles before each next one (with jitter). */
    static final long FIRST_PAUSE_MS = 200;
    private static final Pattern PERMANENT = Pattern.compile(
        "(?i)\\b(400|401|403|404|405|409|412|416)\\b|AccessDenied|Access Denied|Forbidden|NoSuchKey|NoSuchBucket"
        + "|InvalidAccessKeyId|SignatureDoesNotMatch|InvalidObjectState|not found|no such");
    private static final Pattern TRANSIENT = Pattern.compile(
        "(?i)\\b(429|500|502|503|504)\\b|Service Unavailable|SlowDown|ServerBusy|Internal ?Error|Connection reset"
        + "|Broken pipe|timed out|timeout|RequestTimeout|Too Many Requests|temporarily|premature end");

    /**
     * Whether a failed read may succeed when tried again: a 5xx or 429 answer, a reset or timed-out
     * connection, a response cut short. Never a missing file, a refused access (403), a bad request,
     * an interrupted (killed) task, or an error that says nothing of the kind.
     */
    public static boolean isTransient(Throwable error) {
        boolean transientSeen = false;
        for (Throwable t = error; t != null; t = t.getCause() == t ? null : t.getCause()) {
            String name = t.getClass().getName();
            String message = String.valueOf(t.getMessage());
            if (t instanceof FileNotFoundException || t instanceof java.nio.file.NoSuchFileException
                || t instanceof java.nio.file.AccessDeniedException || name.endsWith(".AccessDeniedException")
                || name.endsWith(".PathNotFoundException") || name.endsWith(".PathPermissionException")
                || PERMANENT.matcher(message).find()) {
                return false;
            }
            if (t instanceof InterruptedIOException && !(t instanceof SocketTimeoutException)) {
                return false;
            }
            if (t instanceof SocketException || t instanceof SocketTimeoutException || t instanceof EOFException
                || TRANSIENT.matcher(message).find()) {
                transientSeen = true;
            }
        }
        return transientSeen;
    }

    /** {@link #fetch}, read again from the start after a transient error; each retry counted. */
    static byte[] fetchWithRetries(Configuration conf, Piece p, LongAccumulator retries) throws IOException {
        long pause = FIRST_PAUSE_MS;
        for (int attempt = 1; ; attempt++) {
            try {
                return fetch(conf, p);
            } catch (IOException e) {
                if (attempt >= FETCH_ATTEMPTS || Thread.currentThread().isInterrupted() || !isTransient(e)) {
                    throw e;
                }
            }
            if (retries != null) {
                retries.add(1L);
            }
            try {
                Thread.sleep(pause / 2 + ThreadLocalRandom.current().nextLong(pause / 2 + 1));
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new InterruptedIOException("interrupted before reading " + metadataPath(p.uri) + " again");
            }
            pause *= 2;
        }
    }

    static byte[] fetch(Configuration conf, Piece p) throws IOException {
        Path path = new Path(URI.create(p.uri));
        FileSystem fs = path.getFileSystem(conf);
        ByteArrayOutputStream out = new ByteArrayOutputStream((int) Math.min(Integer.MAX_VALUE - 8, p.size + 1));
        byte[] buf = new byte[64 << 10];
        try (FSDataInputStream in = fs.open(path)) {
            int n;
            while ((n = in.read(buf)) != -1) {
                out.write(buf, 0, n);
            }
        }
        return out.toByteArray();
    }

    /** The rows of one file or split. */
    abstract static class Lines {
        final Piece piece;
        final InternalRow meta;
        long bytes;  // read from storage for this piece
        JsonLineParser parser;

        Lines(Piece piece) {
            this.piece = piece;
            Path path = new Path(URI.create(piece.uri));
            this.meta = new GenericInternalRow(new Object[] {UTF8String.fromString(metadataPath(piece.uri)),
                UTF8String.fromString(path.getName()), piece.size, piece.mtimeMs * 1000L});
        }

        abstract InternalRow next() throws IOException;

        abstract void close();

        InternalRow row(Text line) {
            return row(line.getBytes(), 0, line.getLength());
        }

        InternalRow row(byte[] b, int off, int len) {
            if (parser != null) {
                return parser.parse(b, off, len, meta.getUTF8String(0));
            }
            byte[] bytes = Arrays.copyOfRange(b, off, off + len);
            return new GenericInternalRow(new Object[] {UTF8String.fromBytes(bytes), meta});
        }

        static Lines fetched(Configuration conf, CompressionCodecFactory codecs, Piece p, byte[] data)
                throws IOException {
            CompressionCodec codec = codecs.getCodec(new Path(URI.create(p.uri)));
            if (codec == null) {
                return new InMemory(p, data);
            }
            InputStream raw = new ByteArrayInputStream(data);
            Decompressor d = CodecPool.getDecompressor(codec);
            try {
                return new Fetched(p, codec.createInputStream(raw, d), conf, d);
            } catch (IOException | RuntimeException e) {
                CodecPool.returnDecompressor(d);
                throw e;
            }
        }

        static Lines streamed(Configuration conf, Piece p) throws IOException {
            return new Streamed(conf, p);
        }
    }

    private static final byte[] BOM = {(byte) 0xEF, (byte) 0xBB, (byte) 0xBF};
    private static final long HIGH_BITS = 0x8080808080808080L;
    private static final long LOW_BITS = 0x0101010101010101L;
    private static final long LFS = LOW_BITS * '\n';
    private static final long CRS = LOW_BITS * '\r';

    /**
     * A whole uncompressed file in memory, split in place as {@code LineRecordReader} splits a
     * file read from its start (what {@link Fetched} does through Hadoop's {@code LineReader},
     * without copying each line twice): a line ends at LF, CR or CR LF, which it does not hold; a
     * last line without an end is a line; a byte-order mark that opens the file is dropped.
     */
    static final class InMemory extends Lines {
        private final byte[] data;
        private int pos;

        InMemory(Piece p, byte[] data) {
            super(p);
            this.data = data;
            boolean bom = data.length >= 3 && data[0] == BOM[0] && data[1] == BOM[1] && data[2] == BOM[2];
            this.pos = bom ? 3 : 0;
        }

        @Override
        InternalRow next() {
            byte[] b = data;
            int end = b.length;
            if (pos >= end) {
                return null;
            }
            int start = pos;
            int i = lineEnd(b, start, end);
            int len = i - start;
            if (i < end) {
                i += b[i] == '\r' && i + 1 < end && b[i + 1] == '\n' ? 2 : 1;
            }
            pos = i;
            return row(b, start, len);
        }

        @Override
        void close() {
        }

        /** The index of the first LF or CR in {@code b[from, to)}, or {@code to}: eight bytes at a time. */
        static int lineEnd(byte[] b, int from, int to) {
            int i = from;
            while (i + 8 <= to) {
                long w = Platform.getLong(b, Platform.BYTE_ARRAY_OFFSET + i);
                long lf = w ^ LFS;
                long cr = w ^ CRS;
                if (((((lf - LOW_BITS) & ~lf) | ((cr - LOW_BITS) & ~cr)) & HIGH_BITS) != 0) {
                    break;  // a byte of the eight is one of them
                }
                i += 8;
            }
            while (i < to && b[i] != '\n' && b[i] != '\r') {
                i++;
            }
            return i;
        }
    }

    /** A whole file in memory, split as {@code LineRecordReader} splits a file read from its start. */
    static final class Fetched extends Lines {
        private final LineReader reader;
        private final Decompressor decompressor;
        private final Text line = new Text();
        private boolean first = true;

        Fetched(Piece p, InputStream in, Configuration conf, Decompressor decompressor) throws IOException {
            super(p);
            this.reader = new LineReader(in, conf);
            this.decompressor = decompressor;
        }

        @Override
        InternalRow next() throws IOException {
            int consumed = reader.readLine(line, Integer.MAX_VALUE, Integer.MAX_VALUE);
            if (first) {
                first = false;
                int len = line.getLength();
                byte[] b = line.getBytes();
                if (len >= 3 && b[0] == BOM[0] && b[1] == BOM[1] && b[2] == BOM[2]) {
                    // LineRecordReader drops the mark; a file of nothing but the mark has no line.
                    consumed -= 3;
                    byte[] rest = Arrays.copyOfRange(b, 3, len);
                    line.set(rest);
                }
            }
            return consumed == 0 ? null : row(line);
        }

        @Override
        void close() {
            try {
                reader.close();
            } catch (IOException e) {
                // an in-memory stream: nothing to release
            }
            if (decompressor != null) {
                CodecPool.returnDecompressor(decompressor);
            }
        }
    }

    /** A split or a large file: Hadoop's LineRecordReader over the file system, as Spark reads it. */
    static final class Streamed extends Lines {
        private final LineRecordReader reader = new LineRecordReader();

        Streamed(Configuration conf, Piece p) throws IOException {
            super(p);
            FileSplit split = new FileSplit(new Path(URI.create(p.uri)), p.start, p.length, new String[0]);
            reader.initialize(split, new TaskAttemptContextImpl(conf, new TaskAttemptID()));
        }

        @Override
        InternalRow next() throws IOException {
            if (!reader.nextKeyValue()) {
                return null;
            }
            return row(reader.getCurrentValue());
        }

        @Override
        void close() {
            try {
                reader.close();
            } catch (IOException e) {
                // closing after the last line: nothing left to lose
            }
        }
    }
}
