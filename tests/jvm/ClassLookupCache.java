package promptscore.testjvm;

import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;

import py4j.reflection.ClassLoadingStrategy;
import py4j.reflection.CurrentThreadClassLoadingStrategy;
import py4j.reflection.ReflectionUtil;

/**
 * py4j's class lookups for the tests' session, with the names that were not found remembered.
 *
 * <p>PySpark resolves names part by part ({@code jvm.py4j.reflection.TypeUtil}: {@code py4j}, then
 * {@code py4j.reflection}, each also under every star import), and each name that is not a class
 * costs a search of every jar on the class path. PySpark turns each Java exception into its own
 * with 13 such checks, about 170 failed lookups. The tests' session makes tens of thousands; the
 * answers do not change while its class path stays the same, which it does (every jar of the tests
 * is on it from the start). What is found is looked up as before.
 */
public final class ClassLookupCache implements ClassLoadingStrategy {
  private final ClassLoadingStrategy inner = new CurrentThreadClassLoadingStrategy();
  private final Set<String> missing = ConcurrentHashMap.newKeySet();

  /** Puts this strategy in place of py4j's for the whole JVM. */
  public static void install() {
    ReflectionUtil.setClassLoadingStrategy(new ClassLookupCache());
  }

  @Override
  public Class<?> classForName(String name) throws ClassNotFoundException {
    String key = System.identityHashCode(getClassLoader()) + ":" + name;
    if (missing.contains(key)) {
      throw new ClassNotFoundException(name) {
        @Override
        public synchronized Throwable fillInStackTrace() {
          return this;  // thrown only to say "not here": py4j never prints it
        }
      };
    }
    try {
      return inner.classForName(name);
    } catch (ClassNotFoundException e) {
      missing.add(key);
      throw e;
    }
  }

  @Override
  public ClassLoader getClassLoader() {
    return inner.getClassLoader();
  }
}
