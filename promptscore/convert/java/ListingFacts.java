package promptscore.readahead;

import java.io.IOException;
import java.io.StringWriter;
import java.io.UncheckedIOException;
import java.net.URI;
import java.net.URISyntaxException;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonGenerator;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.Path;

/**
 * What the convert job's listing holds, counted in one pass over the file statuses that Spark's
 * file index keeps (no request, no query plan, nothing per file across py4j), with the same
 * rules as Spark's pruned scans of that index: a file is read when its name is a data path (not
 * {@code _x} without {@code =}, not {@code .x}), it has at least one byte, and its name ends
 * with one of the input suffixes; the other non-empty data paths are skipped by name; the rest
 * (empty, or Spark's own metadata names) are empty files.
 *
 * <p>The sample is picked as {@code promptscore.convert.inputs} picks it: every k-th input file in
 * the order of {@code Dataset.inputFiles} (Spark's own order), skipping other names and the
 * metadata names Spark lists but never reads ({@code _metadata.jsonl}).
 */
public final class ListingFacts {
    private static final JsonFactory JSON = new JsonFactory();

    private ListingFacts() {
    }

    /**
     * One JSON object: {@code files}, {@code bytes} (the files read), {@code skipped},
     * {@code skipped_bytes}, {@code total} (every listed file), {@code examples} (the first
     * {@code examples} skipped files in the index's order), {@code sample} (the picked files'
     * paths, as {@code Path.toString} spells them, in picking order) and {@code known} (path,
     * size, modification ms of each picked file that is read).
     *
     * @param index Spark's file index of the listing (its {@code allFiles}, asked once per pass and
     *              never held, so that millions of statuses are walked, not copied)
     * @param order every listed file's URI in Spark's order ({@code Dataset.inputFiles})
     * @param suffixList the input names' suffixes, separated by U+0000
     */
    public static String describe(Object index, String[] order, String suffixList, int sampleFiles, int examples) {
        String[] suffixes = suffixList.split("\u0000", -1);
        long nFiles = 0, nBytes = 0, skipped = 0, skippedBytes = 0;
        List<String> shown = new ArrayList<>();
        scala.collection.Iterator<FileStatus> it = statuses(index);
        while (it.hasNext()) {
            FileStatus f = it.next();
            if (f.isDirectory() || !isRead(f)) {
                continue;
            }
            if (endsWithAny(f.getPath().getName(), suffixes)) {
                nFiles++;
                nBytes += f.getLen();
            } else {
                skipped++;
                skippedBytes += f.getLen();
                if (shown.size() < examples) {
                    shown.add(f.getPath().toString());
                }
            }
        }
        List<String> sample = pick(order, suffixes, (int) Math.min(sampleFiles, nFiles));
        Set<String> wanted = new HashSet<>(sample);
        StringWriter out = new StringWriter();
        try (JsonGenerator g = JSON.createGenerator(out)) {
            g.writeStartObject();
            g.writeNumberField("files", nFiles);
            g.writeNumberField("bytes", nBytes);
            g.writeNumberField("skipped", skipped);
            g.writeNumberField("skipped_bytes", skippedBytes);
            g.writeNumberField("total", order.length);
            writeStrings(g, "examples", shown);
            writeStrings(g, "sample", sample);
            g.writeArrayFieldStart("known");
            if (!wanted.isEmpty()) {
                it = statuses(index);
                while (it.hasNext()) {
                    FileStatus f = it.next();
                    String path = f.getPath().toString();
                    if (!f.isDirectory() && wanted.contains(path) && isRead(f)
                            && endsWithAny(f.getPath().getName(), suffixes)) {
                        g.writeStartArray();
                        g.writeString(path);
                        g.writeNumber(f.getLen());
                        g.writeNumber(f.getModificationTime());
                        g.writeEndArray();
                    }
                }
            }
            g.writeEndArray();
            g.writeEndObject();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return out.toString();
    }

    /** The statuses of {@code index.allFiles()} (a Scala {@code Seq}, whose class differs between
     *  Scala versions: called by name). */
    @SuppressWarnings("unchecked")
    static scala.collection.Iterator<FileStatus> statuses(Object index) {
        try {
            Object files = index.getClass().getMethod("allFiles").invoke(index);
            return ((scala.collection.Iterable<FileStatus>) files).iterator();
        } catch (ReflectiveOperationException e) {
            throw new IllegalArgumentException("not a file index with allFiles(): " + index.getClass().getName(), e);
        }
    }

    /** Every k-th URI of {@code order} that is a data path ending with a suffix (k = |order| /
     *  want), as paths. */
    static List<String> pick(String[] order, String[] suffixes, int want) {
        List<String> picked = new ArrayList<>();
        if (want <= 0) {
            return picked;
        }
        int step = Math.max(1, order.length / want);
        int i = 0;
        while (picked.size() < want && i < order.length) {
            if (endsWithAny(order[i], suffixes) && isDataName(order[i].substring(order[i].lastIndexOf('/') + 1))) {
                try {
                    picked.add(new Path(new URI(order[i])).toString());
                } catch (URISyntaxException e) {
                    throw new IllegalArgumentException(e);
                }
                i += step;
            } else {
                i += 1;
            }
        }
        return picked;
    }

    /** What Spark's scan of the index opens: a data path with at least one byte. */
    private static boolean isRead(FileStatus f) {
        return isDataName(f.getPath().getName()) && f.getLen() > 0;
    }

    /** Whether Spark's scan opens a file of this name (not {@code _x} without {@code =}, not
     *  {@code .x}); the same in a URI's last segment, where neither character is encoded. */
    private static boolean isDataName(String name) {
        return !((name.startsWith("_") && !name.contains("=")) || name.startsWith("."));
    }

    private static boolean endsWithAny(String s, String[] suffixes) {
        for (String suffix : suffixes) {
            if (s.endsWith(suffix)) {
                return true;
            }
        }
        return false;
    }

    private static void writeStrings(JsonGenerator g, String name, List<String> values) throws IOException {
        g.writeArrayFieldStart(name);
        for (String v : values) {
            g.writeString(v);
        }
        g.writeEndArray();
    }
}
